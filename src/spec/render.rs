//! Handlebars rendering in strict mode, with `facts` and `vars`.
//!
//! A missing variable is an error, never an empty string. Output is not
//! HTML-escaped: these are configuration files. A template file is compiled
//! and rendered once per run however many files use it, since every file
//! sees the same context.
//!
//! Templates come from whoever can push to the branch, so rendering is
//! bounded: partials and decorators (`{{> x}}`, `{{#*inline}}`) are refused
//! (an inline partial that calls itself would recurse until the stack
//! overflows), blocks nest at most `MAX_TEMPLATE_DEPTH` deep, `{{#each}}`
//! iterates at most `MAX_EACH_ITERATIONS` times per run over every template,
//! and one template renders at most `MAX_RENDERED_BYTES`.
//!
//! `{{secret "db.password"}}` inserts the decrypted `secrets/db.password.age`
//! of the same tree. A template that uses it makes its file secret; a
//! secret that does not decrypt on this host fails only the files that use
//! it, so the helper records the failure instead of failing the render.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use handlebars::template::{Parameter, Template, TemplateElement};
use handlebars::{
    BlockContext, BlockParams, Context, Handlebars, Helper, HelperDef, HelperResult, Output, Path,
    PathSeg, RenderContext, RenderError, RenderErrorReason, Renderable,
};
use serde_json::Value as Json;

use crate::secrets::{Opened, Secrets};
use crate::source::{RepoPath, Tree, TreeError};

/// Deepest nesting of blocks and subexpressions accepted in a template.
pub const MAX_TEMPLATE_DEPTH: usize = 64;

/// Iterations of `{{#each}}` one run may make, over every template.
pub const MAX_EACH_ITERATIONS: u64 = 1_000_000;

/// Largest output of one template (the largest file a tree may hold).
pub const MAX_RENDERED_BYTES: usize = crate::source::MAX_TREE_FILE as usize;

/// Name an inline template is rendered under; a repository path never
/// contains NUL, so it cannot clash with a template file.
const INLINE_NAME: &str = "\0inline";

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

/// Whether a render used `{{secret}}`, and why a secret failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretUse {
    pub used: bool,
    /// The first secret that could not be decrypted: file and reason.
    pub failure: Option<String>,
}

/// Renders templates against one context.
pub struct Renderer<'t> {
    hb: Handlebars<'t>,
    context: Context,
    rendered: HashMap<String, Result<Arc<str>, TemplateFailure>>,
    /// What the `secret` helper saw during the render in hand.
    secret_use: Arc<Mutex<SecretUse>>,
    /// The same, per rendered template file.
    file_secret_use: HashMap<String, SecretUse>,
    /// The compiled templates that are only text and plain references.
    plain: HashMap<String, Plain>,
}

impl Renderer<'static> {
    /// A renderer without the `secret` helper.
    pub fn new(context: serde_json::Value) -> Renderer<'static> {
        Renderer::build(context)
    }
}

impl<'t> Renderer<'t> {
    /// A renderer whose `{{secret "NAME"}}` opens `secrets/NAME.age` of
    /// `tree` as `secrets` says.
    pub fn with_secrets(
        context: serde_json::Value,
        tree: &'t dyn Tree,
        secrets: Secrets,
    ) -> Renderer<'t> {
        let mut r = Renderer::build(context);
        let helper = SecretHelper {
            tree,
            secrets,
            seen: r.secret_use.clone(),
        };
        r.hb.register_helper("secret", Box::new(helper));
        r
    }

    fn build(context: serde_json::Value) -> Renderer<'t> {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_escape_fn(handlebars::no_escape);
        hb.register_helper(
            "each",
            Box::new(BudgetedEach {
                left: Arc::new(AtomicU64::new(MAX_EACH_ITERATIONS)),
            }),
        );
        Renderer {
            hb,
            context: Context::from(context),
            rendered: HashMap::new(),
            secret_use: Arc::default(),
            file_secret_use: HashMap::new(),
            plain: HashMap::new(),
        }
    }

    fn take_secret_use(&self) -> SecretUse {
        std::mem::take(
            &mut *self
                .secret_use
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Whether the last `render_inline` used a secret.
    pub fn inline_secret_use(&self) -> SecretUse {
        self.secret_use
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the template file rendered under `name` used a secret.
    pub fn file_secret_use(&self, name: &str) -> SecretUse {
        self.file_secret_use.get(name).cloned().unwrap_or_default()
    }

    /// Renders a string that may hold `{{ }}` expressions. Text without any
    /// is returned as it is, without going through handlebars.
    pub fn render_inline(&mut self, text: &str) -> Result<String, TemplateFailure> {
        self.take_secret_use();
        if !text.contains("{{") {
            return Ok(text.to_string());
        }
        let result = self.compile_and_render(INLINE_NAME, text);
        self.unregister_inline();
        result
    }

    /// What `render_file` gave for this name, if it was rendered already.
    pub fn rendered(&self, name: &str) -> Option<Result<Arc<str>, TemplateFailure>> {
        self.rendered.get(name).cloned()
    }

    /// Renders a template file, compiling and rendering it once per name.
    pub fn render_file(&mut self, name: &str, text: &str) -> Result<Arc<str>, TemplateFailure> {
        if let Some(done) = self.rendered.get(name) {
            return done.clone();
        }
        self.take_secret_use();
        let result = self.compile_and_render(name, text).map(Arc::from);
        let used = self.take_secret_use();
        if used.used {
            self.file_secret_use.insert(name.to_string(), used);
        }
        self.rendered.insert(name.to_string(), result.clone());
        result
    }

    /// Whether a template file is compiled under `name` already.
    pub fn is_compiled(&self, name: &str) -> bool {
        self.hb.get_template(name).is_some()
    }

    /// Renders the template file `name` for one file that carries its own
    /// `vars:`, laid key by key over the run's vars. The template is
    /// compiled once (from `text`, needed only the first time) and then
    /// rendered per file; these renders are not shared between files.
    pub fn render_file_with_vars(
        &mut self,
        name: &str,
        text: Option<&str>,
        vars: &[(String, Json)],
    ) -> Result<Arc<str>, TemplateFailure> {
        if !self.is_compiled(name) {
            let text = text.unwrap_or_default();
            self.compile(name, text)?;
        }
        let saved = overlay_vars(&mut self.context, vars);
        self.take_secret_use();
        let result = self.render_registered(name, &self.context).map(Arc::from);
        restore_vars(&mut self.context, saved);
        let used = self.take_secret_use();
        if used.used {
            self.file_secret_use.insert(name.to_string(), used);
        }
        result
    }

    /// `render_inline` for a file that carries its own `vars:`.
    pub fn render_inline_with_vars(
        &mut self,
        text: &str,
        vars: &[(String, Json)],
    ) -> Result<String, TemplateFailure> {
        self.take_secret_use();
        if !text.contains("{{") {
            return Ok(text.to_string());
        }
        let result = self.compile(INLINE_NAME, text).and_then(|()| {
            let saved = overlay_vars(&mut self.context, vars);
            let result = self.render_registered(INLINE_NAME, &self.context);
            restore_vars(&mut self.context, saved);
            result
        });
        self.unregister_inline();
        result
    }

    fn unregister_inline(&mut self) {
        self.hb.unregister_template(INLINE_NAME);
        self.plain.remove(INLINE_NAME);
    }

    fn compile(&mut self, name: &str, text: &str) -> Result<(), TemplateFailure> {
        let template = Template::compile(text).map_err(|e| {
            let pos = e.pos();
            TemplateFailure {
                line: pos.map(|p| p.0),
                column: pos.map(|p| p.1),
                reason: syntax_reason(e.reason()),
            }
        })?;
        check_template(&template, 0)?;
        match Plain::of(&template) {
            Some(plain) => self.plain.insert(name.to_string(), plain),
            None => self.plain.remove(name),
        };
        self.hb.register_template(name, template);
        Ok(())
    }

    fn compile_and_render(&mut self, name: &str, text: &str) -> Result<String, TemplateFailure> {
        self.compile(name, text)?;
        self.render_registered(name, &self.context)
    }

    fn render_registered(&self, name: &str, context: &Context) -> Result<String, TemplateFailure> {
        if let Some(rendered) = self.plain.get(name).and_then(|p| p.render(context.data())) {
            // The name only: the text may hold a secret's value.
            tracing::trace!(template = ?name, "rendered as plain text and references");
            return Ok(rendered);
        }
        let mut out = CappedOutput {
            buf: Vec::new(),
            overflowed: false,
        };
        match self
            .hb
            .render_with_context_to_write(name, context, &mut out)
        {
            // Every segment handlebars writes is a `&str`.
            Ok(()) => String::from_utf8(out.buf).map_err(|_| TemplateFailure {
                line: None,
                column: None,
                reason: "the rendered output is not valid UTF-8".into(),
            }),
            Err(_) if out.overflowed => Err(TemplateFailure {
                line: None,
                column: None,
                reason: format!(
                    "the rendered output is larger than {} MiB",
                    MAX_RENDERED_BYTES / (1024 * 1024)
                ),
            }),
            Err(e) => Err(render_failure(e)),
        }
    }
}

/// A template of text and plain references to values (`{{vars.port}}`,
/// `{{{facts.hostname}}}`) and nothing else, rendered without going
/// through handlebars: handlebars spends some 2,500 instructions on each
/// reference (a render context, a path walk through its block stack, a
/// helper lookup, the escape function), which made rendering a thousand
/// small templated files cost as much as parsing the YAML that declares
/// them.
///
/// It gives exactly what handlebars gives, or nothing: a reference that
/// does not lead through objects to a string, number or boolean (missing,
/// null, an array, an object, an index into an array) renders through
/// handlebars, which also makes every error its own (strict mode).
/// Whitespace control (`{{~ ~}}`), standalone comments and escaped
/// braces are handled by handlebars' compiler, in the text it leaves.
#[derive(Debug)]
struct Plain {
    pieces: Vec<Piece>,
    /// The length of its text, to size the output once.
    text_len: usize,
}

#[derive(Debug)]
enum Piece {
    Text(String),
    /// Object keys from the context's root.
    Value(Vec<String>),
}

impl Plain {
    /// The template's pieces, when it has only text, comments and plain
    /// references. A reference has at least two segments (`vars.x`,
    /// `facts.os.id`): a one-word `{{name}}` may call a helper, and no
    /// helper's name has a `.` or `/` in it. `this` is no segment (as in
    /// handlebars); `@root`, `../` and `@index` are refused.
    fn of(t: &Template) -> Option<Plain> {
        let mut pieces = Vec::with_capacity(t.elements.len());
        for e in &t.elements {
            match e {
                TemplateElement::RawString(text) => pieces.push(Piece::Text(text.clone())),
                TemplateElement::Comment(_) => {}
                TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h) => {
                    let Parameter::Path(Path::Relative((segs, _))) = &h.name else {
                        return None;
                    };
                    let plain = !h.block
                        && h.params.is_empty()
                        && h.hash.is_empty()
                        && h.block_param.is_none()
                        && h.template.is_none()
                        && h.inverse.is_none()
                        && segs.len() >= 2;
                    if !plain {
                        return None;
                    }
                    let keys = segs
                        .iter()
                        .map(|s| match s {
                            PathSeg::Named(k) => Some(k.clone()),
                            _ => None,
                        })
                        .collect::<Option<Vec<String>>>()?;
                    pieces.push(Piece::Value(keys));
                }
                _ => return None,
            }
        }
        let text_len = pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.len(),
                Piece::Value(_) => 0,
            })
            .sum();
        Some(Plain { pieces, text_len })
    }

    /// The rendered text, or `None` for handlebars to render it.
    fn render(&self, data: &Json) -> Option<String> {
        use std::fmt::Write;
        // Room for the text and a short value per reference.
        let mut out = String::with_capacity(self.text_len + 16 * self.pieces.len());
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Value(keys) => {
                    let mut value = data;
                    for k in keys {
                        value = value.as_object()?.get(k)?;
                    }
                    match value {
                        Json::String(s) => out.push_str(s),
                        Json::Number(n) => write!(out, "{n}").ok()?,
                        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                        _ => return None,
                    }
                }
            }
            if out.len() > MAX_RENDERED_BYTES {
                return None;
            }
        }
        Some(out)
    }
}

/// Lays one file's `vars` over the run's vars in `context`, key by key,
/// and returns what they replaced for [`restore_vars`]: the context is
/// changed in place for one render, where a copy of it (facts and all) per
/// file cost a thousand copies for a thousand files.
fn overlay_vars(context: &mut Context, vars: &[(String, Json)]) -> Vec<(String, Option<Json>)> {
    let Some(Json::Object(run_vars)) = context.data_mut().get_mut("vars") else {
        return Vec::new();
    };
    vars.iter()
        .map(|(k, v)| (k.clone(), run_vars.insert(k.clone(), v.clone())))
        .collect()
}

/// Puts back what [`overlay_vars`] replaced, last first (so a key given
/// twice ends with the run's own value).
fn restore_vars(context: &mut Context, saved: Vec<(String, Option<Json>)>) {
    let Some(Json::Object(run_vars)) = context.data_mut().get_mut("vars") else {
        return;
    };
    for (k, old) in saved.into_iter().rev() {
        match old {
            Some(v) => run_vars.insert(k, v),
            None => run_vars.remove(&k),
        };
    }
}

/// The parser's reason, without the grammar's list of every rule it
/// expected ("expected escape, expression, html_expression, ...").
fn syntax_reason(reason: &handlebars::TemplateErrorReason) -> String {
    match reason {
        handlebars::TemplateErrorReason::InvalidSyntax(s) if s.contains("stack limit") => {
            format!("blocks nest deeper than {MAX_TEMPLATE_DEPTH} levels")
        }
        handlebars::TemplateErrorReason::InvalidSyntax(_) => {
            "invalid handlebars syntax (a misspelt or unclosed {{ }} or block?)".into()
        }
        other => other.to_string(),
    }
}

/// Refuses partials and decorators, and nesting deeper than the limit.
fn check_template(t: &Template, depth: usize) -> Result<(), TemplateFailure> {
    if depth > MAX_TEMPLATE_DEPTH {
        return Err(TemplateFailure {
            line: None,
            column: None,
            reason: format!("blocks nest deeper than {MAX_TEMPLATE_DEPTH} levels"),
        });
    }
    for (i, e) in t.elements.iter().enumerate() {
        let pos = t.mapping.get(i);
        let fail = |reason: String| TemplateFailure {
            line: pos.map(|m| m.0),
            column: pos.map(|m| m.1),
            reason,
        };
        match e {
            TemplateElement::RawString(_) | TemplateElement::Comment(_) => {}
            TemplateElement::PartialExpression(_) | TemplateElement::PartialBlock(_) => {
                return Err(fail(
                    "partials ({{> name}}) are not supported: a template cannot include another"
                        .into(),
                ));
            }
            TemplateElement::DecoratorExpression(_) | TemplateElement::DecoratorBlock(_) => {
                return Err(fail(
                    "decorators such as {{#*inline}} are not supported".into(),
                ));
            }
            TemplateElement::Expression(h)
            | TemplateElement::HtmlExpression(h)
            | TemplateElement::HelperBlock(h) => {
                let params = h.params.iter().chain(std::iter::once(&h.name));
                for p in params.chain(h.hash.values()) {
                    check_parameter(p, depth + 1).map_err(|f| fail(f.reason))?;
                }
                for inner in h.template.iter().chain(h.inverse.iter()) {
                    check_template(inner, depth + 1)?;
                }
            }
            // Anything a later handlebars adds is refused until reviewed.
            _ => return Err(fail("unsupported template construct".into())),
        }
    }
    Ok(())
}

fn check_parameter(p: &Parameter, depth: usize) -> Result<(), TemplateFailure> {
    let Parameter::Subexpression(sub) = p else {
        return Ok(());
    };
    if depth > MAX_TEMPLATE_DEPTH {
        return Err(TemplateFailure {
            line: None,
            column: None,
            reason: format!("subexpressions nest deeper than {MAX_TEMPLATE_DEPTH} levels"),
        });
    }
    match sub.as_element() {
        TemplateElement::Expression(h)
        | TemplateElement::HtmlExpression(h)
        | TemplateElement::HelperBlock(h) => {
            for p in h.params.iter().chain(h.hash.values()) {
                check_parameter(p, depth + 1)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `{{secret "NAME"}}`: the decrypted `secrets/NAME.age`.
///
/// A name that is missing or escapes the tree is an error of the branch
/// (every host would see it). A secret this host cannot decrypt writes
/// nothing and is recorded, so only the files using it fail.
struct SecretHelper<'t> {
    tree: &'t dyn Tree,
    secrets: Secrets,
    seen: Arc<Mutex<SecretUse>>,
}

impl HelperDef for SecretHelper<'_> {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let usage = || {
            RenderErrorReason::Other(
                "secret takes the name of a secret, such as {{secret \"db.password\"}} for secrets/db.password.age"
                    .into(),
            )
        };
        let name = h
            .param(0)
            .and_then(|p| p.value().as_str())
            .ok_or_else(usage)?;
        if h.params().len() != 1 || name.is_empty() {
            return Err(usage().into());
        }
        let path = RepoPath::parse(&format!("secrets/{name}.age"))
            .map_err(|m| RenderErrorReason::Other(format!("secret '{name}': {m}")))?;
        let bytes = self.tree.read(&path).map_err(|e| {
            RenderErrorReason::Other(match e {
                TreeError::NotFound(..) => format!("secret '{name}': {path} does not exist"),
                TreeError::Refused(_, why) | TreeError::Io(_, why) => {
                    format!("secret '{name}': {path}: {why}")
                }
            })
        })?;
        let opened = self.secrets.open(&bytes);
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.used = true;
        match opened {
            Ok(Opened::Plain(plain)) => match String::from_utf8(plain) {
                Ok(text) => out.write(&text)?,
                Err(_) => {
                    seen.failure.get_or_insert_with(|| {
                        format!(
                            "cannot use {path}: {}",
                            crate::secrets::DecryptFailure::NotText
                        )
                    });
                }
            },
            Ok(Opened::Unread) => {}
            // Without a key (validate, render) a malformed file is a
            // mistake in the branch, reported with the template.
            Err(e) if matches!(self.secrets, Secrets::Unread) => {
                return Err(
                    RenderErrorReason::Other(format!("secret '{name}': {path}: {e}")).into(),
                );
            }
            Err(e) => {
                seen.failure
                    .get_or_insert_with(|| format!("cannot decrypt {path}: {e}"));
            }
        }
        Ok(())
    }
}

/// Collects output, failing once it grows past `MAX_RENDERED_BYTES`.
struct CappedOutput {
    buf: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, seg: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + seg.len() > MAX_RENDERED_BYTES {
            self.overflowed = true;
            return Err(std::io::Error::other("rendered output too large"));
        }
        self.buf.extend_from_slice(seg);
        Ok(seg.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `{{#each}}` as handlebars has it, but drawing every iteration from a
/// budget shared by the whole run: three nested loops over a list of a
/// thousand items would otherwise spin for a billion iterations.
struct BudgetedEach {
    left: Arc<AtomicU64>,
}

impl BudgetedEach {
    fn take(&self) -> Result<(), RenderError> {
        self.left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .map(|_| ())
            .map_err(|_| {
                RenderErrorReason::Other(format!(
                    "{{{{#each}}}} iterated more than {MAX_EACH_ITERATIONS} times in this run"
                ))
                .into()
            })
    }
}

impl HelperDef for BudgetedEach {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let value = h
            .param(0)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex("each", 0))?;
        let Some(template) = h.template() else {
            return Ok(());
        };
        // (key for @key, value) of each item; arrays have no @key.
        let items: Vec<(Option<&String>, &Json)> = match value.value() {
            Json::Array(list) if !list.is_empty() || h.inverse().is_none() => {
                list.iter().map(|v| (None, v)).collect()
            }
            Json::Object(obj) if !obj.is_empty() || h.inverse().is_none() => {
                obj.iter().map(|(k, v)| (Some(k), v)).collect()
            }
            _ => {
                return match h.inverse() {
                    Some(else_template) => else_template.render(r, ctx, rc, out),
                    None if r.strict_mode() => {
                        Err(RenderError::strict_error(value.relative_path()))
                    }
                    None => Ok(()),
                };
            }
        };
        let mut block = BlockContext::new();
        let base_path = value.context_path();
        match base_path {
            Some(p) => block.base_path_mut().clone_from(p),
            None => block.set_base_value(value.value().clone()),
        }
        rc.push_block(block);
        let len = items.len();
        for (i, (key, v)) in items.into_iter().enumerate() {
            self.take()?;
            if let Some(block) = rc.block_mut() {
                let is_first = i == 0;
                let index = Json::from(i);
                let key_json = key.map(|k| Json::String(k.clone()));
                block.set_local_var("first", Json::Bool(is_first));
                block.set_local_var("last", Json::Bool(i + 1 == len));
                block.set_local_var("index", index.clone());
                if let Some(k) = &key_json {
                    block.set_local_var("key", k.clone());
                }
                let segment = match key {
                    Some(k) => k.clone(),
                    None => i.to_string(),
                };
                match base_path {
                    Some(p) => {
                        if is_first {
                            let mut path = p.clone();
                            path.push(segment);
                            *block.base_path_mut() = path;
                        } else if let Some(last) = block.base_path_mut().last_mut() {
                            *last = segment;
                        }
                    }
                    None => block.set_base_value(v.clone()),
                }
                let param_key = key_json.unwrap_or(index);
                if let Some(name) = h.block_param() {
                    let mut params = BlockParams::new();
                    if base_path.is_some() {
                        params.add_path(name, Vec::new())?;
                    } else {
                        params.add_value(name, v.clone())?;
                    }
                    block.set_block_params(params);
                } else if let Some((name, key_name)) = h.block_param_pair() {
                    let mut params = BlockParams::new();
                    if base_path.is_some() {
                        params.add_path(name, Vec::new())?;
                    } else {
                        params.add_value(name, v.clone())?;
                    }
                    params.add_value(key_name, param_key)?;
                    block.set_block_params(params);
                }
            }
            template.render(r, ctx, rc, out)?;
        }
        rc.pop_block();
        Ok(())
    }
}
fn render_failure(e: handlebars::RenderError) -> TemplateFailure {
    if let handlebars::RenderErrorReason::TemplateError(te) = e.reason() {
        let pos = te.pos();
        return TemplateFailure {
            line: pos.map(|p| p.0),
            column: pos.map(|p| p.1),
            reason: syntax_reason(te.reason()),
        };
    }
    let reason = match e.reason() {
        handlebars::RenderErrorReason::MissingVariable(Some(path)) => {
            format!("missing variable '{path}'")
        }
        handlebars::RenderErrorReason::MissingVariable(None) => {
            "missing variable (a lookup or helper argument found nothing)".into()
        }
        handlebars::RenderErrorReason::HelperNotFound(name) => {
            format!("unknown helper '{name}'")
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

    fn renderer() -> Renderer<'static> {
        Renderer::new(json!({"facts": {"hostname": "web1"}, "vars": {"port": 8080, "html": "<b>"}}))
    }

    /// Renders a thousand-odd templates made of text, comments, plain
    /// references and things that only look like them, each both by the
    /// plain path (`Plain`) and by handlebars: wherever the plain path
    /// renders, handlebars gives the same text.
    #[test]
    fn a_plain_template_renders_as_handlebars_renders_it() {
        let mut r = Renderer::new(json!({
            "facts": {"hostname": "web1", "os": {"id": "debian"}},
            "vars": {
                "s": "a b", "n": 8080, "f": 1.5, "neg": -3, "big": u64::MAX, "b": true,
                "nul": null, "list": [1, "x"], "obj": {"k": "v"}, "odd key": "o", "e": "",
                "nl": "two\nlines\n", "brace": "{{vars.s}}"
            }
        }));
        let texts = [
            "",
            "x",
            " ",
            "\n",
            "  \n",
            "a = ",
            "line\n  indented\n",
            "{{! c }}",
            "{{!-- c --}}",
            "\\{{vars.s}}",
            "\t",
            "{{!c}}\n",
            "  {{! alone }}  \n",
        ];
        let refs = [
            "{{vars.s}}",
            "{{{vars.s}}}",
            "{{ vars.n }}",
            "{{~vars.f~}}",
            "{{~ vars.s}}",
            "{{vars.s ~}}",
            "{{this.vars.b}}",
            "{{vars/s}}",
            "{{facts.os.id}}",
            "{{facts.hostname}}",
            "{{vars.missing}}",
            "{{vars.nul}}",
            "{{vars.list}}",
            "{{vars.obj}}",
            "{{vars.obj.k}}",
            "{{vars.list.0}}",
            "{{vars.list.[1]}}",
            "{{vars.s.x}}",
            "{{@root.vars.s}}",
            "{{vars.[odd key]}}",
            "{{#if vars.b}}y{{/if}}",
            "{{len vars.list}}",
            "{{vars.big}}",
            "{{vars.neg}}",
            "{{vars.e}}",
            "{{./vars.s}}",
            "{{vars.n.x}}",
            "{{vars.nl}}",
            "{{vars.brace}}",
            "{{../vars.s}}",
            "{{vars}}",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let (mut plain, mut handed_back) = (0, 0);
        for _ in 0..1500 {
            let mut t = String::new();
            for _ in 0..1 + next(6) {
                t.push_str(texts[next(texts.len())]);
                t.push_str(refs[next(refs.len())]);
            }
            t.push_str(texts[next(texts.len())]);
            if r.compile("t.hbs", &t).is_err() {
                continue;
            }
            let fast = r
                .plain
                .get("t.hbs")
                .and_then(|p| p.render(r.context.data()));
            let was_plain = r.plain.remove("t.hbs").is_some();
            let slow = r.render_registered("t.hbs", &r.context);
            match fast {
                Some(text) => {
                    plain += 1;
                    assert_eq!(Ok(text), slow, "{t:?}");
                }
                None if was_plain => handed_back += 1,
                None => {}
            }
        }
        // Both ways were taken many times.
        assert!(plain > 100, "{plain}");
        assert!(handed_back > 100, "{handed_back}");
    }

    #[test]
    fn renders_facts_and_vars_without_escaping() {
        let mut r = renderer();
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
    fn per_file_vars_last_for_one_render_only() {
        let mut r = renderer();
        let t = "{{vars.port}} {{vars.n}}";
        let one = [("n".to_string(), json!(1)), ("port".to_string(), json!(1))];
        let twice = [("n".to_string(), json!(2)), ("n".to_string(), json!(3))];
        assert_eq!(
            &*r.render_file_with_vars("t", Some(t), &one).unwrap(),
            "1 1"
        );
        assert_eq!(
            &*r.render_file_with_vars("t", None, &twice).unwrap(),
            "8080 3"
        );
        // Neither file's vars are left behind for the next render.
        let missing = r.render_file_with_vars("t", None, &[]).unwrap_err();
        assert!(missing.reason.contains("vars.n"), "{}", missing.reason);
        assert_eq!(r.render_inline("{{vars.port}}").unwrap(), "8080");
        assert_eq!(
            r.render_inline_with_vars("{{vars.port}}", &one).unwrap(),
            "1"
        );
        assert_eq!(r.render_inline("{{vars.port}}").unwrap(), "8080");
    }

    #[test]
    fn plain_text_skips_handlebars() {
        assert_eq!(
            renderer().render_inline("no braces }}").unwrap(),
            "no braces }}"
        );
    }

    #[test]
    fn each_keeps_its_handlebars_meaning() {
        let mut r = Renderer::new(json!({"vars": {
            "list": ["a", "b", "c"],
            "map": {"x": 1, "y": 2},
            "empty": [],
            "rows": [{"n": "r1"}, {"n": "r2"}]
        }}));
        let out = r
            .render_inline(
                "{{#each vars.list}}{{@index}}={{this}}{{#if @first}}F{{/if}}{{#if @last}}L{{/if}},{{/each}}",
            )
            .unwrap();
        assert_eq!(out, "0=aF,1=b,2=cL,");
        let out = r
            .render_inline("{{#each vars.map}}{{@key}}:{{this}};{{/each}}")
            .unwrap();
        assert_eq!(out, "x:1;y:2;");
        let out = r
            .render_inline("{{#each vars.list as |item i|}}{{i}}{{item}}{{/each}}")
            .unwrap();
        assert_eq!(out, "0a1b2c");
        let out = r
            .render_inline("{{#each vars.map as |v k|}}{{k}}{{v}}{{/each}}")
            .unwrap();
        assert_eq!(out, "x1y2");
        let out = r
            .render_inline("{{#each vars.empty}}x{{else}}none{{/each}}")
            .unwrap();
        assert_eq!(out, "none");
        let out = r
            .render_inline("{{#each vars.rows}}{{n}}/{{../vars.list.[0]}} {{/each}}")
            .unwrap();
        assert_eq!(out, "r1/a r2/a ");
        // Strict mode: a missing list is an error, not an empty loop.
        let err = r
            .render_inline("{{#each vars.nope}}x{{/each}}")
            .unwrap_err();
        assert!(err.reason.contains("vars.nope"), "{err}");
    }

    #[test]
    fn partials_and_inline_partials_are_refused_not_recursed() {
        let mut r = renderer();
        // Regression: an inline partial calling itself overflowed the stack
        // and aborted the process.
        let err = r
            .render_inline("{{#*inline \"x\"}}{{> x}}{{/inline}}{{> x}}")
            .unwrap_err();
        assert!(err.reason.contains("not supported"), "{err}");
        let err = r.render_file("t.hbs", "a\n  {{> other}}\n").unwrap_err();
        assert!(err.reason.contains("partials"), "{err}");
        assert_eq!(err.line, Some(2), "{err:?}");
        let err = r.render_inline("{{#> layout}}x{{/layout}}").unwrap_err();
        assert!(err.reason.contains("partials"), "{err}");
    }

    #[test]
    fn nested_each_is_bounded_by_the_iteration_budget() {
        // Regression: three nested loops over a thousand items spun for a
        // billion iterations.
        let list: Vec<u32> = (0..1000).collect();
        let mut r = Renderer::new(json!({ "vars": { "l": list } }));
        let err = r
            .render_file(
                "bomb.hbs",
                "{{#each vars.l}}{{#each ../vars.l}}{{#each ../../vars.l}}{{/each}}{{/each}}{{/each}}",
            )
            .unwrap_err();
        assert!(err.reason.contains("iterated more than"), "{err}");
        // The budget is per run: once spent, the next template fails too.
        assert!(r.render_inline("{{#each vars.l}}{{/each}}").is_err());
        // A fresh run renders an ordinary loop.
        let mut r = Renderer::new(json!({ "vars": { "l": [1, 2] } }));
        assert_eq!(
            r.render_inline("{{#each vars.l}}{{this}}{{/each}}")
                .unwrap(),
            "12"
        );
    }

    #[test]
    fn huge_output_is_refused() {
        let list: Vec<u32> = (0..300).collect();
        let line = "x".repeat(1024);
        let mut r = Renderer::new(json!({ "vars": { "l": list, "line": line } }));
        // 300 × 300 × 1 KiB = 90 MiB, over the cap, within the iteration budget.
        let err = r
            .render_file(
                "big.hbs",
                "{{#each vars.l}}{{#each ../vars.l}}{{../../vars.line}}{{/each}}{{/each}}",
            )
            .unwrap_err();
        assert!(err.reason.contains("larger than"), "{err}");
    }

    #[test]
    fn messages_name_the_problem_not_the_grammar() {
        let mut r = renderer();
        let err = r
            .render_file("a.hbs", "a\n{{#each vars.l}}\nno end\n")
            .unwrap_err();
        assert!(
            err.reason.starts_with("invalid handlebars syntax ("),
            "{err}"
        );
        assert!(!err.reason.contains("html_expression"), "{err}");
        let err = r.render_inline("{{shell \"rm -rf /\"}}").unwrap_err();
        assert_eq!(err.reason, "unknown helper 'shell'");
        let err = r.render_inline("{{lookup vars.port 5}}").unwrap_err();
        assert!(!err.reason.contains("None"), "{err}");
        let deep = format!(
            "{}x{}",
            "{{#if true}}".repeat(20000),
            "{{/if}}".repeat(20000)
        );
        let err = r.render_inline(&deep).unwrap_err();
        assert!(err.reason.contains("nest deeper"), "{err}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut r = renderer();
        let deep = format!("{}x{}", "{{#if true}}".repeat(100), "{{/if}}".repeat(100));
        let err = r.render_inline(&deep).unwrap_err();
        assert!(err.reason.contains("nest deeper"), "{err}");
        let shallow = format!("{}x{}", "{{#if true}}".repeat(10), "{{/if}}".repeat(10));
        assert_eq!(r.render_inline(&shallow).unwrap(), "x");
        let deep = format!("{{{{{}1{}}}}}", "(eq 1 ".repeat(100), ")".repeat(100));
        let err = r.render_inline(&deep).unwrap_err();
        assert!(err.reason.contains("nest deeper"), "{err}");
    }
}
