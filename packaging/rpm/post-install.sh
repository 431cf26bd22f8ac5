# $1 is 1 on install, 2 on upgrade.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -eq 1 ]; then
        systemctl enable --now trueup.service >/dev/null 2>&1 || :
    else
        systemctl try-restart trueup.service >/dev/null 2>&1 || :
    fi
fi
