# -*- coding: utf-8 -*-
# vim: ft=sls
# A changed config reloads keepalived (SIGHUP): the instance keeps its state.
# So does a changed hook config or module: keepalived starts the failover
# agent anew on reload, and the agent reads its config when it starts.
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/libvalidate.jinja" import errors, hcloud_lb with context %}

include:
  - {{ tplroot }}.validate
  - {{ tplroot }}.keepalived.config
  - {{ tplroot }}.hook
{%- if not errors %}
{%-   set keepalived = hcloud_lb.lookup.keepalived %}
{%-   set bin = keepalived.get('bin', '/usr/sbin/keepalived') %}

keepalived is running:
  service.running:
    - name: {{ keepalived.service }}
{#- lookup:keepalived:enable false leaves the boot configuration alone. #}
{%- if keepalived.get('enable', true) %}
    - enable: true
{%- endif %}
    - reload: true
    # Debian's sysvinit script has no status action; the process tells
    # (systemd ignores sig). Salt's ps match skips lines that hold its own
    # PID as a substring: where PIDs are 2-3 digits (a fresh container) it
    # can miss keepalived, so start such hosts' PIDs higher.
    - sig: {{ bin }}
    - require:
      - sls: {{ tplroot }}.keepalived.config
      - sls: {{ tplroot }}.hook
    - watch:
      - file: keepalived's config is managed
      - file: the failover hook's minion config is managed
      - file: the failover hook has the hcloud_ip module
      - file: the failover hook has the hcloud_failover engine

{#- service.running says only "failed to start"; this puts keepalived's own
    words into the run, as this state's comment (stateful: its stderr). With
    systemd, keepalived's messages since this run began, from the journal;
    otherwise (the init script's output is lost, keepalived logs to syslog)
    keepalived's config check, run now with its log on the console, and, when
    that passes, the start or reload tried once more, with its output. The
    VRRP password never shows: keepalived does not log it, and any auth_pass
    value is masked all the same. Runs only when the service state failed;
    under test=True it runs test_name. #}
why keepalived failed to start or reload:
  cmd.run:
    - name: |-
        exec 1>&2
        show() { sed -E -e 's/(auth_pass)[[:space:]]+[^[:space:]]+/\1 ********/g' -e '/^[[:space:]]*$/d' | tail -n 20; }
        if [ -d /run/systemd/system ]; then
            echo "journalctl -u {{ keepalived.service }}:"
            journalctl -u {{ keepalived.service }} --since @{{ None | strftime('%s') }} -o cat --no-pager | show
            exit 1
        fi
        if ! out=$({{ bin }} -t -l -f {{ keepalived.config }} 2>&1); then
            echo "{{ bin }} -t -l -f {{ keepalived.config }}:"
            printf '%s\n' "$out" | show
            exit 1
        fi
        action=start
        service {{ keepalived.service }} status >/dev/null 2>&1 && action=reload
        out=$(service {{ keepalived.service }} $action 2>&1)
        echo "service {{ keepalived.service }} $action, tried once more:"
        printf '%s\n' "$out" | show
        exit 1
    - stateful: true
    - test_name: 'true'
    - onfail:
      - service: keepalived is running
    # Not when the config was refused: the service state then fails for its
    # requisite, the daemon is untouched, and it must stay so (no retry).
    - require:
      - file: keepalived's config is managed
{%- endif %}
