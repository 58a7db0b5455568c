# -*- coding: utf-8 -*-
# vim: ft=sls
include:
  - .validate
  - .package
  - .floating_ips
  - .hook
  - .haproxy
  - .keepalived
