# -*- coding: utf-8 -*-
# vim: ft=sls
# Takes the floating IPs off the public interface, removes their boot config
# and turns ip_nonlocal_bind off again, after haproxy has stopped.
# Works with the pillar gone or invalid: the addresses and interfaces come
# from the boot config the apply wrote (it lists exactly what the apply put
# on the interface), the ip_nonlocal_bind settings from its sysctl file; a
# pillar that still describes the groups adds their addresses (interface
# binding), as before. Whatever is read from the host or an unvalidated
# pillar is used only when it is an IP address, and is quoted for the shell.
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import hcloud_lb with context %}
{%- set network = hcloud_lb.lookup.network %}
{%- set sysctl_conf = '/etc/sysctl.d/60-hcloud-lb.conf' %}
{%- set marker_start = '# BEGIN hcloud_lb floating IPs (managed by Salt)' %}
{%- set marker_end = '# END hcloud_lb floating IPs' %}
{%- set default_interface = hcloud_lb.public_interface if hcloud_lb.public_interface is string else 'eth0' %}

{#- The boot config files: one path, or (wicked) one per interface. #}
{%- set configs = {} %}
{%- if '{interface}' in network.config %}
{%-   set head, tail = network.config.split('{interface}', 1) %}
{%-   set directory, prefix = head.rsplit('/', 1) %}
{%-   for path in salt['file.find'](directory, name=prefix ~ '*' ~ tail, type='f', grep=marker_start | regex_escape) %}
{%-     do configs.update({path: path[head | length:(path | length) - (tail | length)]}) %}
{%-   endfor %}
{%-   do configs.update({network.config | replace('{interface}', default_interface): default_interface}) %}
{%- else %}
{%-   do configs.update({network.config: none}) %}
{%- endif %}

{#- [interface, address] pairs: what the boot configs put on the interfaces. #}
{%- set found = [] %}
{%- for path, file_interface in configs.items() if salt['file.file_exists'](path) %}
{%-   set text = salt['file.read'](path) %}
{%-   if network.style == 'netplan' %}
{%-     set ethernets = ((text | load_yaml or {}).get('network') or {}).get('ethernets') or {} %}
{%-     for interface, spec in ethernets.items() if spec is mapping %}
{%-       for cidr in spec.get('addresses') or [] if cidr is string %}
{%-         do found.append([interface, cidr.split('/')[0]]) %}
{%-       endfor %}
{%-     endfor %}
{%-   else %}
{%-     set current = namespace(interface=file_interface, inside=network.style != 'wicked') %}
{%-     for line in text.splitlines() %}
{%-       set words = line.split() %}
{%-       if network.style == 'wicked' %}
{%-         if line.strip() in [marker_start, marker_end] %}
{%-           set current.inside = line.strip() == marker_start %}
{%-         elif current.inside and line.startswith('IPADDR_hcloudlb') and '=' in line %}
{%-           do found.append([file_interface, line.split('=', 1)[1].strip('\'" ').split('/')[0]]) %}
{%-         endif %}
{%-       elif network.style == 'networkmanager' %}
{%-         if words[:3] == ['ip', 'addr', 'replace'] and words | length == 6 and words[4] == 'dev' %}
{%-           do found.append([words[5], words[3].split('/')[0]]) %}
{%-         endif %}
{%-       elif words | length >= 2 and words[0] == 'iface' %}
{%-         set current.interface = words[1].split(':')[0] %}
{%-       elif words | length >= 2 and words[0] == 'address' and current.interface %}
{%-         do found.append([current.interface, words[1]]) %}
{%-       endif %}
{%-     endfor %}
{%-   endif %}
{%- endfor %}

{#- And what the pillar, if it still describes groups, binds on the interface. #}
{%- set aliases = [] %}
{%- if hcloud_lb.alias_ips is mapping %}
{%-   for spec in hcloud_lb.alias_ips.values() if spec is mapping and spec.ips is iterable and spec.ips is not string %}
{%-     do aliases.extend(spec.ips) %}
{%-   endfor %}
{%- endif %}
{%- if hcloud_lb.floating_ip_binding == 'interface' and hcloud_lb.groups is mapping %}
{%-   for group in hcloud_lb.groups.values() if group is mapping and group.address is string and group.address not in aliases %}
{%-     do found.append([default_interface, group.address]) %}
{%-   endfor %}
{%- endif %}

{#- The ip_nonlocal_bind families the sysctl file turned on, and both when the
    pillar says nonlocal (as before). #}
{%- set families = ['ipv4', 'ipv6'] if hcloud_lb.floating_ip_binding == 'nonlocal' else [] %}
{%- if salt['file.file_exists'](sysctl_conf) %}
{%-   for line in salt['file.read'](sysctl_conf).splitlines() %}
{%-     for family in ['ipv4', 'ipv6'] if line.replace(' ', '') == 'net.' ~ family ~ '.ip_nonlocal_bind=1' and family not in families %}
{%-       do families.append(family) %}
{%-     endfor %}
{%-   endfor %}
{%- endif %}

include:
  - {{ tplroot }}.haproxy.service.clean

haproxy's nonlocal bind setting is removed:
  file.absent:
    - name: {{ sysctl_conf }}
{%- for family in families %}

net.{{ family }}.ip_nonlocal_bind is off:
  cmd.run:
    - name: sysctl -q -w net.{{ family }}.ip_nonlocal_bind=0
    - onlyif: test "$(sysctl -n net.{{ family }}.ip_nonlocal_bind)" = 1
    - require:
      - sls: {{ tplroot }}.haproxy.service.clean
{%- endfor %}

{%- set removed = [] %}
{%- for interface, address in found if interface is string and interface and address is string and address | is_ip %}
{%-   set cidr = address ~ ('/64' if ':' in address else '/32') %}
{%-   if [interface, cidr] not in removed %}
{%-     do removed.append([interface, cidr]) %}

{{ address }} is not on {{ interface }}:
  cmd.run:
    - name: ip addr del {{ cidr | quote }} dev {{ interface | quote }}
    - onlyif: ip -o addr show dev {{ interface | quote }} | grep -qF {{ (' ' ~ cidr ~ ' ') | quote }}
    - require:
      - sls: {{ tplroot }}.haproxy.service.clean
{%-   endif %}
{%- endfor %}
{%- for path, interface in configs.items() %}
{%-   if network.style == 'wicked' %}

the floating IPs are not on {{ interface }} after a reboot:
  file.replace:
    - name: {{ path }}
    - pattern: {{ ('^' ~ marker_start | regex_escape ~ '\n(.*\n)*?' ~ marker_end | regex_escape ~ '\n?') | yaml_dquote }}
    - repl: ''
    - bufsize: file
    - ignore_if_missing: true
{%-   else %}

the floating IPs are not on any interface after a reboot:
  file.absent:
    - name: {{ path }}
{%-   endif %}
{%- endfor %}
