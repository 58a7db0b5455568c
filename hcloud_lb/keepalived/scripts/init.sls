# -*- coding: utf-8 -*-
# vim: ft=sls
# keepalived's health check, agent and failover hook scripts. With
# enable_script_security keepalived runs a script only when it and every
# directory above it are owned by root and not writable by group or other;
# `keepalived -t` does not check that, so the last state here does.
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/libvalidate.jinja" import errors, hcloud_lb with context %}

include:
  - {{ tplroot }}.validate
  - {{ tplroot }}.package
{%- if not errors %}
{%-   set scripts_dir = hcloud_lb.lookup.keepalived.scripts_dir %}
{%-   set check = hcloud_lb.vrrp.check %}
{%-   set check_context = {'monitor': hcloud_lb.haproxy.monitor,
                             'processes': check.processes,
                             'timeout': check.timeout,
                             'probe_interval': check.probe_interval,
                             'window': [check.interval - check.probe_interval, 0] | max} %}
{%-   set hook_context = {'salt_call': hcloud_lb.lookup.salt_call,
                            'hook_config_dir': hcloud_lb.lookup.hook_config_dir,
                            'instance': hcloud_lb.name} %}
{%-   set scripts = {
        'check_haproxy': {'mode': '0755', 'context': check_context},
        'agent': {'mode': '0700', 'context': hook_context},
        'failover': {'mode': '0700', 'context': hook_context},
      } %}

{#- Before the agent, one notify script recorded the state and ran a re-assert
    loop: gone with the upgrade. #}
keepalived's former notify script is gone:
  file.absent:
    - name: {{ scripts_dir }}/notify

keepalived's scripts directory is root's:
  file.directory:
    - name: {{ scripts_dir }}
    - user: root
    - group: root
    - mode: '0755'
    - makedirs: true
    - require:
      - sls: {{ tplroot }}.package
{%-   for name, script in scripts.items() %}

keepalived's {{ name }} script is managed:
  file.managed:
    - name: {{ scripts_dir }}/{{ name }}
    - source: salt://{{ tplroot }}/keepalived/files/{{ name }}.jinja
    - template: jinja
    - context: {{ script.context | json }}
    - user: root
    - group: root
    - mode: '{{ script.mode }}'
    - require:
      - file: keepalived's scripts directory is root's

keepalived's {{ name }} script passes script security:
  test.fail_without_changes:
    - comment: >-
        keepalived refuses {{ scripts_dir }}/{{ name }} under
        enable_script_security: it and every directory above it must be owned
        by root and not writable by group or other
        (salt-call hcloud_lb.script_security_problems {{ scripts_dir }}/{{ name }}
        lists the problems)
    - onlyif:
      - fun: hcloud_lb.script_security_problems
        path: {{ scripts_dir }}/{{ name }}
    - require:
      - file: keepalived's {{ name }} script is managed
{%-   endfor %}
{%- endif %}
