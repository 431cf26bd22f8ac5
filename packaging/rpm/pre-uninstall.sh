# $1 is 0 on removal, 1 on upgrade.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl disable --now trueup.service >/dev/null 2>&1 || :
fi
