//! Handlebars rendering in strict mode, with `facts` and `vars`.
//!
//! A missing variable is an error, never an empty string. Output is not
//! HTML-escaped: these are configuration files. A template file is compiled
//! and rendered once per run however many files use it, since every file
//! sees the same context.

use std::collections::HashMap;
use std::sync::Arc;

use handlebars::Handlebars;

/// A template that failed, with the position inside the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateFailure {
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub reason: String,
}

impl std::fmt::Display for TemplateFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "line {l}, column {c}: {}", self.reason),
            (Some(l), None) => write!(f, "line {l}: {}", self.reason),
            _ => f.write_str(&self.reason),
        }
    }
}

/// Renders templates against one context.
pub struct Renderer {
    hb: Handlebars<'static>,
    context: serde_json::Value,
    rendered: HashMap<String, Result<Arc<String>, TemplateFailure>>,
}

impl Renderer {
    pub fn new(context: serde_json::Value) -> Renderer {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_escape_fn(handlebars::no_escape);
        Renderer {
            hb,
            context,
            rendered: HashMap::new(),
        }
    }

    /// Renders a string that may hold `{{ }}` expressions. Text without any
    /// is returned as it is, without going through handlebars.
    pub fn render_inline(&self, text: &str) -> Result<String, TemplateFailure> {
        if !text.contains("{{") {
            return Ok(text.to_string());
        }
        self.hb
            .render_template(text, &self.context)
            .map_err(render_failure)
    }

    /// Renders a template file, compiling and rendering it once per name.
    pub fn render_file(&mut self, name: &str, text: &str) -> Result<Arc<String>, TemplateFailure> {
        if let Some(done) = self.rendered.get(name) {
            return done.clone();
        }
        let result = self
            .hb
            .register_template_string(name, text)
            .map_err(|e| {
                let pos = e.pos();
                TemplateFailure {
                    line: pos.map(|p| p.0),
                    column: pos.map(|p| p.1),
                    reason: e.reason().to_string(),
                }
            })
            .and_then(|()| {
                self.hb
                    .render(name, &self.context)
                    .map(Arc::new)
                    .map_err(render_failure)
            });
        self.rendered.insert(name.to_string(), result.clone());
        result
    }
}

fn render_failure(e: handlebars::RenderError) -> TemplateFailure {
    if let handlebars::RenderErrorReason::TemplateError(te) = e.reason() {
        let pos = te.pos();
        return TemplateFailure {
            line: pos.map(|p| p.0),
            column: pos.map(|p| p.1),
            reason: te.reason().to_string(),
        };
    }
    let reason = match e.reason() {
        handlebars::RenderErrorReason::MissingVariable(Some(path)) => {
            format!("missing variable '{path}'")
        }
        other => other.to_string(),
    };
    TemplateFailure {
        line: e.line_no,
        column: e.column_no,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn renderer() -> Renderer {
        Renderer::new(json!({"facts": {"hostname": "web1"}, "vars": {"port": 8080, "html": "<b>"}}))
    }

    #[test]
    fn renders_facts_and_vars_without_escaping() {
        let r = renderer();
        assert_eq!(
            r.render_inline("{{facts.hostname}}:{{vars.port}} {{vars.html}}")
                .unwrap(),
            "web1:8080 <b>"
        );
    }

    #[test]
    fn missing_variable_is_an_error_with_its_line() {
        let mut r = renderer();
        let err = r
            .render_file("t.hbs", "ok\nport {{vars.nope}}\n")
            .unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(err.reason.contains("vars.nope"), "{err}");
    }

    #[test]
    fn syntax_error_names_line() {
        let mut r = renderer();
        let err = r
            .render_file("t.hbs", "a\n{{#if vars.port}}\nno end\n")
            .unwrap_err();
        assert!(err.line.is_some(), "{err:?}");
    }

    #[test]
    fn template_file_is_rendered_once() {
        let mut r = renderer();
        let a = r.render_file("t.hbs", "{{vars.port}}").unwrap();
        let b = r.render_file("t.hbs", "ignored: cached by name").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn plain_text_skips_handlebars() {
        assert_eq!(
            renderer().render_inline("no braces }}").unwrap(),
            "no braces }}"
        );
    }
}
