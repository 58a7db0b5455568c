# -*- coding: utf-8 -*-
# vim: ft=sls
# The failover hook's own Salt config, root only: a minion config with the
# hcloud options (token included) and a copy of the hcloud_ip module, so
# `salt-call -c DIR --local hcloud_ip.failover` works without a master or a
# minion cache (salt-ssh nodes included).
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
{%- endif %}
