# -*- coding: utf-8 -*-
# vim: ft=sls
# A changed config reloads haproxy: the new processes take over the listeners
# and the old ones finish their established connections. A reload that fails
# (a port another process holds, a file descriptor limit haproxy cannot raise)
# leaves the old processes serving.
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/libvalidate.jinja" import errors, hcloud_lb with context %}

include:
  - {{ tplroot }}.validate
  - {{ tplroot }}.haproxy.config
{%- if not errors %}
{%-   set haproxy = hcloud_lb.lookup.haproxy %}
{%-   set bin = haproxy.get('bin', '/usr/sbin/haproxy') %}

haproxy is running:
  service.running:
    - name: {{ haproxy.service }}
{#- lookup:haproxy:enable false leaves the boot configuration alone. #}
{%- if haproxy.get('enable', true) %}
    - enable: true
{%- endif %}
    - reload: true
    - require:
      - sls: {{ tplroot }}.haproxy.config
    - watch:
      - file: haproxy's config is managed

{#- service.running says only "failed to start"; this puts haproxy's own words
    into the run, as this state's comment (stateful: its stderr). With systemd,
    haproxy's messages since this run began, from the journal; otherwise (the
    init script's output is lost) haproxy's config check, run now, and, when
    that passes, the start or reload tried once more, with its output. Runs
    only when the service state failed; under test=True it runs test_name. #}
why haproxy failed to start or reload:
  cmd.run:
    - name: |-
        exec 1>&2
        show() { sed -e 's/\[NOTICE\].*//' -e '/^[[:space:]]*$/d' | tail -n 20; }
        if [ -d /run/systemd/system ]; then
            echo "journalctl -u {{ haproxy.service }}:"
            journalctl -u {{ haproxy.service }} --since @{{ None | strftime('%s') }} -o cat --no-pager | show
            exit 1
        fi
        if ! out=$({{ bin }} -c -f {{ haproxy.config }} 2>&1); then
            echo "{{ bin }} -c -f {{ haproxy.config }}:"
            printf '%s\n' "$out" | show
            exit 1
        fi
        action=start
        service {{ haproxy.service }} status >/dev/null 2>&1 && action=reload
        out=$(service {{ haproxy.service }} $action 2>&1)
        status=$?
        echo "service {{ haproxy.service }} $action, tried once more (exit status $status):"
        printf '%s\n' "$out" | show
        exit $status
    - stateful: true
    - test_name: 'true'
    - onfail:
      - service: haproxy is running
    # Not when the config was refused: the service state then fails for its
    # requisite, the daemon is untouched, and it must stay so (no retry).
    - require:
      - file: haproxy's config is managed
{%- endif %}
