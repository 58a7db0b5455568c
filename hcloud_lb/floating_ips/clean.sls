# -*- coding: utf-8 -*-
# vim: ft=sls
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/libvalidate.jinja" import errors, hcloud_lb with context %}

include:
  - {{ tplroot }}.validate
  - {{ tplroot }}.haproxy.service.clean
{%- if not errors %}
{%-   set addresses = hcloud_lb.groups.values() | map(attribute='address') | list %}
{%-   set interface = hcloud_lb.public_interface %}
{%-   set network = hcloud_lb.lookup.network %}
{%-   set config = network.config | replace('{interface}', interface) %}
{%-   if hcloud_lb.floating_ip_binding == 'nonlocal' %}

haproxy's nonlocal bind setting is removed:
  file.absent:
    - name: /etc/sysctl.d/60-hcloud-lb.conf
{%-     for family in ['ipv4', 'ipv6'] %}

net.{{ family }}.ip_nonlocal_bind is off:
  cmd.run:
    - name: sysctl -q -w net.{{ family }}.ip_nonlocal_bind=0
    - onlyif: test "$(sysctl -n net.{{ family }}.ip_nonlocal_bind)" = 1
    - require:
      - sls: {{ tplroot }}.haproxy.service.clean
{%-     endfor %}
{%-   else %}
{%-     if network.style == 'wicked' %}

the floating IPs are not on {{ interface }} after a reboot:
  file.blockreplace:
    - name: {{ config }}
    - marker_start: '# BEGIN hcloud_lb floating IPs (managed by Salt)'
    - marker_end: '# END hcloud_lb floating IPs'
    - content: ''
    - onlyif: test -f {{ config }}
{%-     else %}

the floating IPs are not on {{ interface }} after a reboot:
  file.absent:
    - name: {{ config }}
{%-     endif %}
{%-     for address in addresses %}
{%-       set cidr = address ~ ('/64' if ':' in address else '/32') %}

{{ address }} is not on {{ interface }}:
  cmd.run:
    - name: ip addr del {{ cidr }} dev {{ interface }}
    - onlyif: ip -o addr show dev {{ interface }} | grep -qF ' {{ cidr }} '
    - require:
      - sls: {{ tplroot }}.haproxy.service.clean
{%-     endfor %}
{%-   endif %}
{%- endif %}
