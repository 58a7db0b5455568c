# -*- coding: utf-8 -*-
# vim: ft=sls
# The failover hook's own Salt config, root only: a minion config with the
# hcloud options (token included) and copies of the hcloud_ip module and its
# engine, so `salt-call -c DIR --local hcloud_ip.failover` works without a
# master or a minion cache (salt-ssh nodes included).
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/libvalidate.jinja" import errors, hcloud_lb with context %}

include:
  - {{ tplroot }}.validate
{%- if not errors %}
{%-   set config_dir = hcloud_lb.lookup.hook_config_dir %}

the failover hook's config directory is root's:
  file.directory:
    - name: {{ config_dir }}
    - user: root
    - group: root
    - mode: '0700'
    - makedirs: true

the failover hook's cache directory is root's:
  file.directory:
    - name: {{ hcloud_lb.lookup.hook_cache_dir }}
    - user: root
    - group: root
    - mode: '0700'
    - makedirs: true

{#- keepalived makes the agent's FIFO here when it starts: the directory must
    be there before it, at boot too (/run is empty then). #}
the failover hook's run directory is root's:
  file.directory:
    - name: {{ hcloud_lb.lookup.run_dir }}
    - user: root
    - group: root
    - mode: '0700'
    - makedirs: true

the failover hook's run directory is made at boot:
  file.managed:
    - name: /etc/tmpfiles.d/hcloud_lb.conf
    - contents: |
        # Managed by Salt (hcloud_lb): keepalived's FIFO to the failover agent.
        d {{ hcloud_lb.lookup.run_dir }} 0700 root root -
    - user: root
    - group: root
    - mode: '0644'

the failover hook has the hcloud_ip module:
  file.managed:
    - name: {{ config_dir }}/_modules/hcloud_ip.py
    - source: salt://_modules/hcloud_ip.py
    - user: root
    - group: root
    - mode: '0600'
    - dir_mode: '0700'
    - makedirs: true
    - require:
      - file: the failover hook's config directory is root's

{#- The engine beneath hcloud_ip: the hook's salt-call loads it from here
    (module_dirs), so the hook needs no master and no synced extension
    modules, salt-ssh nodes included. #}
the failover hook has the hcloud_failover engine:
  file.managed:
    - name: {{ config_dir }}/_utils/hcloud_failover.py
    - source: salt://_utils/hcloud_failover.py
    - user: root
    - group: root
    - mode: '0600'
    - dir_mode: '0700'
    - makedirs: true
    - require:
      - file: the failover hook's config directory is root's

the failover hook's minion config is managed:
  file.managed:
    - name: {{ config_dir }}/minion
    - source: salt://{{ tplroot }}/hook/files/minion.jinja
    - template: jinja
    - context:
        tpldir: {{ tpldir }}
    - user: root
    - group: root
    - mode: '0600'
    - show_changes: false
    - require:
      - file: the failover hook's config directory is root's

{#- Run as the hook runs (its own config, no master), so what it resolves is
    what a failover finds; the token stays in the root-only config. The IDs
    save the failover its look-ups; without them (the API unreachable from
    here just now) the first failover looks them up and caches them, so an
    API outage during an apply does not fail it: the output says why. #}
the failover hook knows the IDs of this node, its peers and its addresses:
  cmd.run:
    - name: >-
        {{ hcloud_lb.lookup.salt_call | quote }} -c {{ config_dir | quote }} --local
        --retcode-passthrough --out=json --out-indent=-1 hcloud_ip.resolve
    - success_retcodes: [1]
    - onchanges:
      - file: the failover hook has the hcloud_ip module
      - file: the failover hook has the hcloud_failover engine
      - file: the failover hook's minion config is managed
{%- endif %}
