# trueup %preun. $1 is 0 on removal, 1 or more on upgrade (nothing to do:
# %post of the new version restarts the agent).
if [ "$1" -eq 0 ]; then
    systemctl disable trueup.service >/dev/null 2>&1 || :
    if [ -d /run/systemd/system ]; then
        systemctl stop trueup.service >/dev/null 2>&1 || :
    fi
fi
