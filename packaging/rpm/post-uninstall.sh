# rpm keeps a changed /etc/trueup/agent.yaml as agent.yaml.rpmsave.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
