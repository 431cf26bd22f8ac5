# trueup %post. $1 is 1 on install, 2 or more on upgrade.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ]; then
    # Enabled even where systemd is not running (image builds, chroots).
    systemctl enable trueup.service >/dev/null 2>&1 || :
    if [ -d /run/systemd/system ] && ! systemctl start trueup.service >/dev/null 2>&1; then
        echo "trueup: the agent did not start: set repo in /etc/trueup/agent.yaml" \
            "or in /etc/trueup/agent.d/*.yaml, then run: systemctl restart trueup" \
            "(journalctl -u trueup says more)" >&2
    fi
elif [ -d /run/systemd/system ]; then
    # --no-block: the agent may be the one running this upgrade (dnf under
    # trueup); a blocking restart would wait for it, and it for dnf.
    systemctl --no-block try-restart trueup.service >/dev/null 2>&1 || :
fi
