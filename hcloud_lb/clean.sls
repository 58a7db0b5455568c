# -*- coding: utf-8 -*-
# vim: ft=sls
# Undoes hcloud_lb in reverse: keepalived first (the node leaves the VRRP
# group), then haproxy, the hook, the floating IPs on the host, the packages.
include:
  - .validate
  - .keepalived.clean
  - .haproxy.clean
  - .hook.clean
  - .floating_ips.clean
  - .package.clean
