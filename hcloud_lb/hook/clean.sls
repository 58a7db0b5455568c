# -*- coding: utf-8 -*-
# vim: ft=sls
# Needs only the lookup values: it works with the pillar gone or invalid.
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import hcloud_lb with context %}
{%- set config_dir = hcloud_lb.lookup.hook_config_dir %}
{#- The hook's directory is made with its parents; the formula's own parent
    (/etc/hcloud_lb by default) goes too once it is empty. #}
{%- set parent = config_dir.rstrip('/').rsplit('/', 1)[0] %}

include:
  - {{ tplroot }}.keepalived.service.clean

the failover hook's config is removed:
  file.absent:
    - name: {{ config_dir }}
    - require:
      - sls: {{ tplroot }}.keepalived.service.clean

the failover hook's run directory is no longer made at boot:
  file.absent:
    - name: /etc/tmpfiles.d/hcloud_lb.conf
    - require:
      - sls: {{ tplroot }}.keepalived.service.clean

the failover hook's cache is removed:
  file.absent:
    - name: {{ hcloud_lb.lookup.hook_cache_dir }}
    - require:
      - sls: {{ tplroot }}.keepalived.service.clean
{%- if parent.rsplit('/', 1)[-1] == 'hcloud_lb' %}

the failover hook's parent directory is removed once empty:
  cmd.run:
    - name: rmdir {{ parent | quote }}
    - onlyif: test -d {{ parent | quote }} && test -z "$(ls -A {{ parent | quote }})"
    - require:
      - file: the failover hook's config is removed
{%- endif %}
