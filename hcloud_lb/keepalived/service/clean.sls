# -*- coding: utf-8 -*-
# vim: ft=sls
# Stopping keepalived hands the addresses to the other node (it becomes
# MASTER).
# Needs only the lookup values: it works with the pillar gone or invalid.
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import hcloud_lb with context %}
{%- set keepalived = hcloud_lb.lookup.keepalived %}
{%- set run_dir = hcloud_lb.lookup.run_dir %}
{%- set bin = keepalived.get('bin', '/usr/sbin/keepalived') %}

keepalived is stopped and disabled:
  service.dead:
    - name: {{ keepalived.service }}
{%- if keepalived.get('enable', true) %}
    - enable: false
{%- endif %}
    - sig: {{ bin }}

{#- Debian's init script stops keepalived without waiting for it to exit (an
    apply right after would find it still running, and not start a new one),
    and the agent (told by keepalived) or a failover hook notify_master
    started may still run a moment (and write into the run dir): wait for
    keepalived (its own pid file, which it removes on exit), then for the
    failover lock, so nothing is left running or written after the run dir
    is removed. #}
keepalived has exited, with its agent and failover hook:
  cmd.run:
    - name: |-
        i=0
        while pid=$(cat /run/keepalived.pid 2>/dev/null) && [ "$(readlink /proc/"$pid"/exe)" = {{ bin | quote }} ]; do
            [ $i -lt 100 ] || { echo "keepalived ($pid) still runs 10 s after it was stopped" >&2; exit 1; }
            sleep 0.1
            i=$((i + 1))
        done
        [ -d {{ run_dir | quote }} ] || exit 0
        flock -w 90 {{ run_dir | quote }}/failover.lock true
    - onlyif: test -d {{ run_dir | quote }} || test -e /run/keepalived.pid
    - require:
      - service: keepalived is stopped and disabled

keepalived's recorded state is removed:
  file.absent:
    - name: {{ run_dir }}
    - require:
      - cmd: keepalived has exited, with its agent and failover hook
