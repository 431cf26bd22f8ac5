# trueup %postun. rpm has no purge: on removal a changed
# /etc/trueup/agent.yaml is kept as agent.yaml.rpmsave, and /etc/trueup/agent.d
# and /var/lib/trueup (cache, last run, backups) stay for the admin to delete.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
