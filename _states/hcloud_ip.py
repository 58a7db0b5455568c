"""
Manage Hetzner Cloud floating IPs and private-network alias IPs.

Built on the ``hcloud_ip`` execution module, whose options (``hcloud:token``
and friends) apply here too.

.. code-block:: yaml

    lb-http floating IP exists:
      hcloud_ip.present:
        - name: lb-http
        - type: ipv4
        - home_location: nbg1
        - description: public web
        - labels:
            lb: main

    lb-http is on this node:
      hcloud_ip.assigned:
        - name: lb-http

    10.0.1.1 is an alias of this node in lb-private:
      hcloud_ip.alias_ips:
        - name: lb-private
        - ips: [10.0.1.1]
"""

from salt.exceptions import CommandExecutionError, SaltInvocationError

__virtualname__ = "hcloud_ip"


def __virtual__():
    if "hcloud_ip.assign" in __salt__:
        return __virtualname__
    return (False, "the hcloud_ip execution module could not be loaded (is hcloud installed?)")


def _ret(name):
    return {"name": name, "result": True, "changes": {}, "comment": ""}


def _failed(ret, comment):
    ret.update(result=False, comment=comment)
    return ret


def _floating_ip_named(name):
    return __salt__["hcloud_ip.list"]().get(name)


def _property_changes(current, wanted):
    return {
        key: {"old": current[key], "new": value}
        for key, value in wanted.items()
        if value is not None and current[key] != value
    }


def present(name, type="ipv4", home_location=None, description=None, labels=None):
    """
    Ensure a floating IP with this name exists, with this description and labels.

    name
        Name of the floating IP.
    type
        ``ipv4`` or ``ipv6``; cannot change once created.
    home_location
        Location (nbg1, fsn1, hel1, ash, hil, sin); required to create, cannot change.
    description
        Free text; left alone when not given.
    labels
        Mapping of labels; replaces the current labels when given.
    """
    ret = _ret(name)
    try:
        current = _floating_ip_named(name)
        if current is None:
            return _create(
                ret,
                name,
                type=type,
                home_location=home_location,
                description=description,
                labels=labels,
            )
        for key, wanted in (("type", type), ("home_location", home_location)):
            if wanted is not None and current[key] != wanted:
                return _failed(
                    ret,
                    f"floating IP {name} has {key} {current[key]}, not {wanted}: "
                    "that cannot change; delete it or pick another name",
                )
        changes = _property_changes(current, {"description": description, "labels": labels})
        if not changes:
            ret["comment"] = f"floating IP {name} ({current['ip']}) is already as wanted"
            return ret
        if __opts__["test"]:
            ret.update(result=None, changes=changes, comment=f"floating IP {name} would be updated")
            return ret
        __salt__["hcloud_ip.update"](name, description=description, labels=labels)
        after = _floating_ip_named(name)
        remaining = _property_changes(after, {"description": description, "labels": labels})
        if remaining:
            return _failed(ret, f"floating IP {name} still differs after the update: {remaining}")
        ret.update(changes=changes, comment=f"floating IP {name} updated")
    except (CommandExecutionError, SaltInvocationError) as exc:
        return _failed(ret, str(exc))
    return ret


def _create(ret, name, *, type, home_location, description, labels):
    if not home_location:
        return _failed(ret, f"home_location is required to create floating IP {name}")
    wanted = {"name": name, "type": type, "home_location": home_location}
    if __opts__["test"]:
        ret.update(
            result=None,
            changes={"old": None, "new": wanted},
            comment=f"floating IP {name} would be created",
        )
        return ret
    __salt__["hcloud_ip.create"](
        name, type=type, home_location=home_location, description=description, labels=labels
    )
    created = _floating_ip_named(name)
    if created is None:
        return _failed(ret, f"floating IP {name} was created but cannot be read back")
    ret.update(
        changes={"old": None, "new": created},
        comment=f"floating IP {name} created: {created['ip']}",
    )
    return ret


def _server_name(server):
    return server["name"] if server else None


def assigned(name, server=None):
    """
    Ensure a floating IP is assigned to a server (default: this node's).

    name
        Name, ID or address of the floating IP.
    server
        Name or ID of the server; this node's server when omitted.
    """
    ret = _ret(name)
    try:
        target = __salt__["hcloud_ip.server_info"](server)
        current = __salt__["hcloud_ip.describe"](name)
        holder = current["server"]
        if holder and holder["id"] == target["id"]:
            ret["comment"] = f"floating IP {name} is already on {target['name']}"
            return ret
        changes = {"server": {"old": _server_name(holder), "new": target["name"]}}
        if __opts__["test"]:
            ret.update(
                result=None,
                changes=changes,
                comment=f"floating IP {name} would move to {target['name']}",
            )
            return ret
        __salt__["hcloud_ip.assign"](name, server=target["id"])
        after = __salt__["hcloud_ip.describe"](name)["server"]
        if not after or after["id"] != target["id"]:
            return _failed(
                ret, f"floating IP {name} is on {_server_name(after)} after assigning it"
            )
        ret.update(changes=changes, comment=f"floating IP {name} moved to {target['name']}")
    except (CommandExecutionError, SaltInvocationError) as exc:
        return _failed(ret, str(exc))
    return ret


def _alias_changes(before, after):
    return {
        server: {"old": before.get(server, []), "new": after.get(server, [])}
        for server in sorted(set(before) | set(after))
        if sorted(before.get(server, [])) != sorted(after.get(server, []))
    }


def _planned_aliases(current, ips, target):
    """What network_aliases will say once ips are taken from the others and given to target."""
    planned = {
        server: [ip for ip in aliases if ip not in ips] for server, aliases in current.items()
    }
    planned[target] = current.get(target, []) + [
        ip for ip in ips if ip not in current.get(target, [])
    ]
    return planned


def alias_ips(name, ips, network=None, server=None):
    """
    Ensure IPs are alias IPs of a server (default: this node's) in a private
    network, taking them from any other server of the network; the server's
    other alias IPs stay.

    name
        The network's name or ID (or a free ID when ``network`` is given).
    ips
        List of IPs inside the network's range.
    network
        The network, when ``name`` is not it.
    server
        Name or ID of the server; this node's server when omitted.
    """
    ret = _ret(name)
    network = network or name
    ips = [ips] if isinstance(ips, str) else ips
    if not isinstance(ips, (list, tuple)) or not all(isinstance(ip, str) for ip in ips):
        return _failed(ret, f"ips must be a list of IPs, got {ips!r}")
    ips = list(ips)
    if not ips:
        return _failed(ret, "ips must list at least one IP")
    try:
        target = __salt__["hcloud_ip.server_info"](server)["name"]
        current = __salt__["hcloud_ip.network_aliases"](network)
        if target not in current:
            return _failed(ret, f"server {target} is not attached to network {network}")
        changes = _alias_changes(current, _planned_aliases(current, ips, target))
        if not changes:
            ret["comment"] = f"{', '.join(ips)} already on {target} in {network}"
            return ret
        if __opts__["test"]:
            ret.update(
                result=None,
                changes=changes,
                comment=f"{', '.join(ips)} would move to {target} in {network}",
            )
            return ret
        __salt__["hcloud_ip.alias_ips"](network, ips=ips, server=target)
        after = __salt__["hcloud_ip.network_aliases"](network)
        if _alias_changes(after, _planned_aliases(after, ips, target)):
            return _failed(ret, f"{', '.join(ips)} are not all on {target} after the change")
        ret.update(
            changes=_alias_changes(current, after),
            comment=f"{', '.join(ips)} moved to {target} in {network}",
        )
    except (CommandExecutionError, SaltInvocationError) as exc:
        return _failed(ret, str(exc))
    return ret
