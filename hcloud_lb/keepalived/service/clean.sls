# -*- coding: utf-8 -*-
# vim: ft=sls
# Stopping keepalived hands the addresses to the other node (it becomes
# MASTER).
# Needs only the lookup values: it works with the pillar gone or invalid.
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import hcloud_lb with context %}
{%- set keepalived = hcloud_lb.lookup.keepalived %}
{%- set run_dir = hcloud_lb.lookup.run_dir %}

keepalived is stopped and disabled:
  service.dead:
    - name: {{ keepalived.service }}
{%- if keepalived.get('enable', true) %}
    - enable: false
{%- endif %}
    - sig: {{ keepalived.get('bin', '/usr/sbin/keepalived') }}

{#- The notify script's re-assert loop outlives keepalived until its next tick,
    and a failover hook it or notify_master started may still run (and write
    into the run dir): end the loop, and wait for the hook's lock, so nothing
    is left running or written after the run dir is removed. #}
keepalived's re-assert loop and failover hook have ended:
  cmd.run:
    - name: |-
        pid=$(cat {{ run_dir | quote }}/reassert.pid 2>/dev/null)
        if [ -n "$pid" ] && grep -qa -e --reassert-loop /proc/"$pid"/cmdline 2>/dev/null; then
            kill "$pid"
        fi
        flock -w 90 {{ run_dir | quote }}/failover.lock true
    - onlyif: test -d {{ run_dir | quote }}
    - require:
      - service: keepalived is stopped and disabled

keepalived's recorded state is removed:
  file.absent:
    - name: {{ run_dir }}
    - require:
      - cmd: keepalived's re-assert loop and failover hook have ended
