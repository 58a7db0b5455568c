"""The metadata service a server sees at http://169.254.169.254/hetzner/v1/metadata."""

import ipaddress

from fakecloud.errors import ApiError


def find_caller(cloud, address, mappings):
    """The server a request comes from: explicit mapping first, then by its addresses."""
    if address in mappings:
        return cloud.servers.get(mappings[address])
    for server in cloud.servers.values():
        if server["public_net"]["ipv4"]["ip"] == address:
            return server
        for entry in server["private_net"]:
            if address == entry["ip"] or address in entry["alias_ips"]:
                return server
    return None


def private_networks(cloud, server):
    networks = []
    for number, entry in enumerate(server["private_net"], start=1):
        network = cloud.networks[entry["network"]]
        subnet = next(
            (
                s
                for s in network["subnets"]
                if ipaddress.ip_address(entry["ip"]) in ipaddress.ip_network(s["ip_range"])
            ),
            {"ip_range": network["ip_range"], "gateway": ""},
        )
        networks.append(
            {
                "ip": entry["ip"],
                "alias_ips": list(entry["alias_ips"]),
                "interface_num": number,
                "mac_address": entry["mac_address"],
                "network_id": network["id"],
                "network_name": network["name"],
                "network": network["ip_range"],
                "subnet": subnet["ip_range"],
                "gateway": subnet["gateway"],
            }
        )
    return networks


def document(cloud, server):
    private = private_networks(cloud, server)
    return {
        "availability-zone": server["datacenter"]["name"],
        "hostname": server["name"],
        "instance-id": server["id"],
        "local-ipv4": "",
        "public-ipv4": server["public_net"]["ipv4"]["ip"],
        "public-keys": [],
        "region": server["location"]["network_zone"],
        "private-networks": private,
        "vendor_data": "#cloud-config\n",
    }


def answer(cloud, leaf, address, mappings):
    """Text body for /hetzner/v1/metadata[/leaf] as the calling server sees it."""
    server = find_caller(cloud, address, mappings)
    if server is None:
        raise ApiError(404, "not_found", f"no server known for address {address}")
    doc = document(cloud, server)
    if not leaf:
        return to_yaml(doc)
    if leaf not in doc:
        raise ApiError(404, "not_found", f"no metadata leaf {leaf}")
    value = doc[leaf]
    return to_yaml(value) if isinstance(value, (list, dict)) else f"{value}"


def to_yaml(value, indent=""):
    """Block YAML for the few shapes the metadata has; avoids needing PyYAML in the lab."""
    if isinstance(value, dict):
        lines = []
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{indent}{key}:\n{to_yaml(item, indent + '  ')}")
            else:
                lines.append(f"{indent}{key}: {_scalar(item)}\n")
        return "".join(lines)
    if isinstance(value, list):
        if not value:
            return f"{indent}[]\n"
        lines = []
        for item in value:
            text = to_yaml(item, indent + "  ") if isinstance(item, (dict, list)) else _scalar(item)
            if isinstance(item, (dict, list)):
                text = f"{indent}- {text[len(indent) + 2 :]}"
            else:
                text = f"{indent}- {text}\n"
            lines.append(text)
        return "".join(lines)
    return f"{indent}{_scalar(value)}\n"


def _scalar(value):
    if isinstance(value, list):
        return "[]"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    # Quote anything YAML could read as something other than this plain string.
    if text == "" or any(c in text for c in ":#\n'\"{}[],&*!|>%@`") or text in ("true", "false"):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text
