"""The /v1 API: routing, request validation, filters, sorting and pagination."""

import ipaddress
import math
import re

from fakecloud import catalog
from fakecloud.errors import ApiError, invalid_input, not_found
from fakecloud.state import public, random_password

NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,61}[A-Za-z0-9])?$")
SERVER_STATUSES = {"initializing", "starting", "running", "stopping", "off", "deleting"}
ROUTES = []


class Request:
    def __init__(self, method, path, query, body):
        self.method = method
        self.path = path
        self.query = query
        self.body = body

    def one(self, name, default=None):
        values = self.query.get(name)
        return values[-1] if values else default

    def all(self, name):
        return self.query.get(name, [])


def route(method, pattern):
    def register(func):
        ROUTES.append((method, re.compile(f"^{pattern}$"), func))
        return func

    return register


def dispatch(cloud, request):
    """Answer one API request: (status, body or None)."""
    path_matched = False
    for method, pattern, func in ROUTES:
        match = pattern.match(request.path)
        if match:
            path_matched = True
            if method == request.method:
                return func(cloud, request, **match.groupdict())
    if path_matched:
        raise ApiError(405, "method_not_allowed", "method not allowed")
    raise ApiError(404, "not_found", "no such API path")


# ---- request body helpers ------------------------------------------------------


def body_of(request):
    if not isinstance(request.body, dict):
        raise ApiError(400, "json_error", "request body must be a JSON object")
    return request.body


def field(body, name, kind, required=False, default=None):
    if name not in body or (body[name] is None and not required):
        if required:
            raise invalid_input(name, "is required")
        return default
    value = body[name]
    # bool is an int in Python, but not in JSON.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _tuple(kind)):
        raise invalid_input(name, "has the wrong type")
    return value


def _tuple(kind):
    return kind if isinstance(kind, tuple) else (kind,)


def labels_of(body, default=None):
    labels = field(body, "labels", dict, default=default)
    if labels is not None and not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise invalid_input("labels", "labels must map strings to strings")
    return labels


def name_of(body, required=True):
    name = field(body, "name", str, required=required)
    if name is not None and not NAME_RE.match(name):
        raise invalid_input("name", "must be a valid hostname")
    return name


def id_field(body, name):
    value = field(body, name, int, required=True)
    if value <= 0:
        raise invalid_input(name, "must be a positive ID")
    return value


def ip_list(body, name):
    values = field(body, name, list, default=[])
    if not all(isinstance(v, str) for v in values):
        raise invalid_input(name, "must be a list of IP addresses")
    return values


# ---- list helpers --------------------------------------------------------------


def listing(request, key, items, filters=("name", "label_selector")):
    """Filter, sort and paginate like every list endpoint of the real API."""
    if "name" in filters and request.one("name") is not None:
        items = [i for i in items if i.get("name") == request.one("name")]
    if "label_selector" in filters and request.one("label_selector"):
        selector = parse_selector(request.one("label_selector"))
        items = [i for i in items if selector(i.get("labels", {}))]
    if "status" in filters and request.all("status"):
        items = [i for i in items if i.get("status") in request.all("status")]
    if "id" in filters and request.all("id"):
        wanted = {_int_param(v, "id") for v in request.all("id")}
        items = [i for i in items if i["id"] in wanted]
    items = sort_items(items, request.all("sort"))
    return paginate(request, key, items)


def _int_param(value, name):
    try:
        return int(value)
    except ValueError:
        raise invalid_input(name, "must be an integer") from None


def paginate(request, key, items):
    page = _int_param(request.one("page", "1"), "page")
    per_page = _int_param(request.one("per_page", "25"), "per_page")
    if page < 1:
        raise invalid_input("page", "must be at least 1")
    if not 1 <= per_page <= 50:
        raise invalid_input("per_page", "must be between 1 and 50")
    total = len(items)
    last = max(1, math.ceil(total / per_page))
    return {
        key: items[(page - 1) * per_page : page * per_page],
        "meta": {
            "pagination": {
                "page": page,
                "per_page": per_page,
                "previous_page": page - 1 if page > 1 else None,
                "next_page": page + 1 if page < last else None,
                "last_page": last,
                "total_entries": total,
            }
        },
    }


def sort_items(items, sorts):
    # Python's sort is stable, so applying the keys last-to-first sorts by all of them.
    for spec in reversed(sorts):
        name, _, direction = spec.partition(":")
        if direction not in ("", "asc", "desc"):
            raise invalid_input("sort", f"invalid sort direction {direction}")
        items = sorted(
            items, key=lambda i, n=name: (i.get(n) is None, i.get(n)), reverse=direction == "desc"
        )
    return items


def _split_selector(text):
    """Split on commas outside parentheses ("env=a,role in (x,y)")."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def parse_selector(text):
    """Compile a Hetzner label selector into a predicate over a labels dict."""
    tests = []
    for raw in _split_selector(text):
        term = raw.strip()
        set_match = re.match(r"^([\w./-]+)\s+(in|notin)\s+\((.*)\)$", term)
        if set_match:
            key, op, values = set_match.groups()
            allowed = {v.strip() for v in values.split(",")}
            if op == "in":
                tests.append(lambda labels, k=key, a=allowed: labels.get(k) in a)
            else:
                tests.append(lambda labels, k=key, a=allowed: labels.get(k) not in a)
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            tests.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            tests.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif term.startswith("!"):
            absent = term[1:].strip()
            tests.append(lambda labels, k=absent: k not in labels)
        elif term:
            tests.append(lambda labels, k=term: k in labels)
        else:
            raise invalid_input("label_selector", "empty selector term")
    return lambda labels: all(test(labels) for test in tests)


# ---- catalog -------------------------------------------------------------------

CATALOG = {
    "locations": ("location", catalog.LOCATIONS),
    "datacenters": ("datacenter", catalog.DATACENTERS),
    "server_types": ("server_type", catalog.SERVER_TYPES),
    "images": ("image", catalog.IMAGES),
}


@route("GET", r"/(?P<kind>locations|datacenters|server_types|images)")
def list_catalog(cloud, request, kind):
    items = CATALOG[kind][1]
    if kind == "images" and request.all("architecture"):
        items = [i for i in items if i["architecture"] in request.all("architecture")]
    answer = listing(request, kind, items)
    if kind == "datacenters":
        answer["recommendation"] = catalog.datacenter_of(catalog.find(catalog.LOCATIONS, "nbg1"))[
            "id"
        ]
    return 200, answer


@route("GET", r"/(?P<kind>locations|datacenters|server_types|images)/(?P<rid>[^/]+)")
def get_catalog(cloud, request, kind, rid):
    singular, items = CATALOG[kind]
    item = next((i for i in items if str(i["id"]) == rid), None)
    if item is None:
        raise not_found(singular)
    return 200, {singular: item}


def _catalog_ref(items, value, name):
    item = catalog.find(items, value)
    if item is None:
        raise invalid_input(name, f"unknown {name} {value}")
    return item


# ---- actions -------------------------------------------------------------------

RESOURCE_TYPES = {"servers": "server", "floating_ips": "floating_ip", "networks": "network"}


def _actions_about(cloud, rtype=None, rid=None):
    def concerns(action):
        return any(
            (rtype is None or r["type"] == rtype) and (rid is None or r["id"] == rid)
            for r in action["resources"]
        )

    return [cloud.render_action(a) for a in cloud.actions.values() if concerns(a)]


@route("GET", r"/actions")
def list_actions(cloud, request):
    return 200, listing(request, "actions", _actions_about(cloud), ("id", "status"))


@route("GET", r"/actions/(?P<aid>[^/]+)")
def get_action(cloud, request, aid):
    return 200, {"action": cloud.render_action(cloud.get(cloud.actions, aid, "action"))}


@route("GET", r"/(?P<coll>servers|floating_ips|networks)/actions")
def list_type_actions(cloud, request, coll):
    items = _actions_about(cloud, RESOURCE_TYPES[coll])
    return 200, listing(request, "actions", items, ("id", "status"))


@route("GET", r"/(?P<coll>servers|floating_ips|networks)/actions/(?P<aid>[^/]+)")
def get_type_action(cloud, request, coll, aid):
    return _one_action(cloud, aid, RESOURCE_TYPES[coll])


@route("GET", r"/(?P<coll>servers|floating_ips|networks)/(?P<rid>\d+)/actions")
def list_resource_actions(cloud, request, coll, rid):
    resource = _resource(cloud, coll, rid)
    items = _actions_about(cloud, RESOURCE_TYPES[coll], resource["id"])
    return 200, listing(request, "actions", items, ("status",))


@route("GET", r"/(?P<coll>servers|floating_ips|networks)/(?P<rid>\d+)/actions/(?P<aid>\d+)")
def get_resource_action(cloud, request, coll, rid, aid):
    resource = _resource(cloud, coll, rid)
    return _one_action(cloud, aid, RESOURCE_TYPES[coll], resource["id"])


def _one_action(cloud, aid, rtype, rid=None):
    action = cloud.get(cloud.actions, aid, "action")
    if not any(r["type"] == rtype and (rid is None or r["id"] == rid) for r in action["resources"]):
        raise not_found("action")
    return 200, {"action": cloud.render_action(action)}


def _resource(cloud, coll, rid):
    return cloud.get(getattr(cloud, coll), rid, RESOURCE_TYPES[coll])


# ---- servers -------------------------------------------------------------------


@route("POST", r"/servers")
def create_server(cloud, request):
    body = body_of(request)
    name = name_of(body)
    server_type = _catalog_ref(
        catalog.SERVER_TYPES, field(body, "server_type", (str, int), required=True), "server_type"
    )
    image = _catalog_ref(catalog.IMAGES, field(body, "image", (str, int), required=True), "image")
    location = _server_location(body)
    networks = [
        cloud.get(cloud.networks, nid, "network")
        for nid in field(body, "networks", list, default=[])
    ]
    server, action = cloud.create_server(
        name,
        server_type=server_type,
        image=image,
        location=location,
        labels=labels_of(body, {}),
        networks=networks,
    )
    return 201, {
        "server": cloud.render_server(server),
        "action": cloud.render_action(action),
        "next_actions": [],
        "root_password": None if field(body, "ssh_keys", list) else random_password(),
    }


def _server_location(body):
    if field(body, "datacenter", (str, int)) is not None:
        datacenter = _catalog_ref(catalog.DATACENTERS, body["datacenter"], "datacenter")
        return datacenter["location"]
    return _catalog_ref(
        catalog.LOCATIONS, field(body, "location", (str, int), default="nbg1"), "location"
    )


@route("GET", r"/servers")
def list_servers(cloud, request):
    for status in request.all("status"):
        if status not in SERVER_STATUSES:
            raise invalid_input("status", f"invalid status {status}")
    items = [cloud.render_server(s) for s in cloud.servers.values()]
    return 200, listing(request, "servers", items, ("name", "label_selector", "status"))


@route("GET", r"/servers/(?P<rid>[^/]+)")
def get_server(cloud, request, rid):
    return 200, {"server": cloud.render_server(cloud.get(cloud.servers, rid, "server"))}


@route("PUT", r"/servers/(?P<rid>[^/]+)")
def update_server(cloud, request, rid):
    server = cloud.get(cloud.servers, rid, "server")
    body = body_of(request)
    cloud.update_server(server, name_of(body, required=False), labels_of(body))
    return 200, {"server": cloud.render_server(server)}


@route("DELETE", r"/servers/(?P<rid>[^/]+)")
def delete_server(cloud, request, rid):
    action = cloud.delete_server(cloud.get(cloud.servers, rid, "server"))
    return 200, {"action": cloud.render_action(action)}


def _server_and_network(cloud, rid, body):
    server = cloud.get(cloud.servers, rid, "server")
    network = cloud.get(cloud.networks, id_field(body, "network"), "network")
    return server, network


@route("POST", r"/servers/(?P<rid>[^/]+)/actions/attach_to_network")
def attach_to_network(cloud, request, rid):
    body = body_of(request)
    server, network = _server_and_network(cloud, rid, body)
    ip = field(body, "ip", str)
    action = cloud.attach(server, network, ip, ip_list(body, "alias_ips"))
    return 201, {"action": cloud.render_action(action)}


@route("POST", r"/servers/(?P<rid>[^/]+)/actions/detach_from_network")
def detach_from_network(cloud, request, rid):
    server, network = _server_and_network(cloud, rid, body_of(request))
    return 201, {"action": cloud.render_action(cloud.detach(server, network))}


@route("POST", r"/servers/(?P<rid>[^/]+)/actions/change_alias_ips")
def change_alias_ips(cloud, request, rid):
    body = body_of(request)
    server, network = _server_and_network(cloud, rid, body)
    if "alias_ips" not in body:
        raise invalid_input("alias_ips", "is required")
    action = cloud.change_alias_ips(server, network, ip_list(body, "alias_ips"))
    return 201, {"action": cloud.render_action(action)}


# ---- floating IPs --------------------------------------------------------------


@route("POST", r"/floating_ips")
def create_floating_ip(cloud, request):
    body = body_of(request)
    ip_type = field(body, "type", str, required=True)
    if ip_type not in ("ipv4", "ipv6"):
        raise invalid_input("type", "must be ipv4 or ipv6")
    server_id = field(body, "server", int)
    location_ref = field(body, "home_location", (str, int))
    if server_id is not None and location_ref is not None:
        raise invalid_input("home_location", "home_location and server are mutually exclusive")
    server = cloud.get(cloud.servers, server_id, "server") if server_id is not None else None
    if server is not None:
        location = server["location"]
    elif location_ref is not None:
        location = _catalog_ref(catalog.LOCATIONS, location_ref, "home_location")
    else:
        raise invalid_input("home_location", "home_location or server is required")
    name = name_of(body, required=False)
    fip, action = cloud.create_floating_ip(
        ip_type,
        name,
        description=field(body, "description", str),
        labels=labels_of(body, {}),
        home_location=location,
        server=server,
    )
    answer = {"floating_ip": public(fip)}
    if action:
        answer["action"] = cloud.render_action(action)
    return 201, answer


@route("GET", r"/floating_ips")
def list_floating_ips(cloud, request):
    items = [public(f) for f in cloud.floating_ips.values()]
    return 200, listing(request, "floating_ips", items)


@route("GET", r"/floating_ips/(?P<rid>[^/]+)")
def get_floating_ip(cloud, request, rid):
    return 200, {"floating_ip": public(cloud.get(cloud.floating_ips, rid, "floating_ip"))}


@route("PUT", r"/floating_ips/(?P<rid>[^/]+)")
def update_floating_ip(cloud, request, rid):
    fip = cloud.get(cloud.floating_ips, rid, "floating_ip")
    body = body_of(request)
    fields = {"name": name_of(body, required=False), "labels": labels_of(body)}
    fields = {k: v for k, v in fields.items() if v is not None}
    if "description" in body:
        fields["description"] = field(body, "description", str)
    cloud.update_floating_ip(fip, fields)
    return 200, {"floating_ip": public(fip)}


@route("DELETE", r"/floating_ips/(?P<rid>[^/]+)")
def delete_floating_ip(cloud, request, rid):
    cloud.delete_floating_ip(cloud.get(cloud.floating_ips, rid, "floating_ip"))
    return 204, None


@route("POST", r"/floating_ips/(?P<rid>[^/]+)/actions/assign")
def assign_floating_ip(cloud, request, rid):
    fip = cloud.get(cloud.floating_ips, rid, "floating_ip")
    server = cloud.get(cloud.servers, id_field(body_of(request), "server"), "server")
    return 201, {"action": cloud.render_action(cloud.assign(fip, server))}


@route("POST", r"/floating_ips/(?P<rid>[^/]+)/actions/unassign")
def unassign_floating_ip(cloud, request, rid):
    fip = cloud.get(cloud.floating_ips, rid, "floating_ip")
    return 201, {"action": cloud.render_action(cloud.unassign(fip))}


@route("POST", r"/floating_ips/(?P<rid>[^/]+)/actions/change_protection")
def protect_floating_ip(cloud, request, rid):
    fip = cloud.get(cloud.floating_ips, rid, "floating_ip")
    delete = field(body_of(request), "delete", bool, default=fip["protection"]["delete"])
    return 201, {"action": cloud.render_action(cloud.protect_floating_ip(fip, delete))}


# ---- networks ------------------------------------------------------------------


def _ip_range(body, name="ip_range"):
    value = field(body, name, str, required=True)
    try:
        return str(ipaddress.ip_network(value))
    except ValueError:
        raise invalid_input(name, f"{value} is not a valid IP range") from None


def _subnet(raw):
    if not isinstance(raw, dict):
        raise invalid_input("subnets", "each subnet must be an object")
    subnet_type = field(raw, "type", str, required=True)
    if subnet_type not in ("cloud", "server", "vswitch"):
        raise invalid_input("type", "must be cloud, server or vswitch")
    return {
        "type": subnet_type,
        "network_zone": field(raw, "network_zone", str, required=True),
        "ip_range": _ip_range(raw),
        "vswitch_id": field(raw, "vswitch_id", int),
    }


@route("POST", r"/networks")
def create_network(cloud, request):
    body = body_of(request)
    name = field(body, "name", str, required=True)
    ip_range = _ip_range(body)
    subnets = [_subnet(raw) for raw in field(body, "subnets", list, default=[])]
    routes = [
        {
            "destination": field(r, "destination", str, required=True),
            "gateway": field(r, "gateway", str, required=True),
        }
        for r in field(body, "routes", list, default=[])
    ]
    network = cloud.create_network(
        name,
        ip_range,
        subnets=subnets,
        routes=routes,
        labels=labels_of(body, {}),
        expose_routes=field(body, "expose_routes_to_vswitch", bool, default=False),
    )
    return 201, {"network": cloud.render_network(network)}


@route("GET", r"/networks")
def list_networks(cloud, request):
    items = [cloud.render_network(n) for n in cloud.networks.values()]
    return 200, listing(request, "networks", items)


@route("GET", r"/networks/(?P<rid>[^/]+)")
def get_network(cloud, request, rid):
    return 200, {"network": cloud.render_network(cloud.get(cloud.networks, rid, "network"))}


@route("PUT", r"/networks/(?P<rid>[^/]+)")
def update_network(cloud, request, rid):
    network = cloud.get(cloud.networks, rid, "network")
    body = body_of(request)
    fields = {
        "name": field(body, "name", str),
        "labels": labels_of(body),
        "expose_routes_to_vswitch": field(body, "expose_routes_to_vswitch", bool),
    }
    cloud.update_network(network, {k: v for k, v in fields.items() if v is not None})
    return 200, {"network": cloud.render_network(network)}


@route("DELETE", r"/networks/(?P<rid>[^/]+)")
def delete_network(cloud, request, rid):
    cloud.delete_network(cloud.get(cloud.networks, rid, "network"))
    return 204, None


@route("POST", r"/networks/(?P<rid>[^/]+)/actions/add_subnet")
def add_subnet(cloud, request, rid):
    network = cloud.get(cloud.networks, rid, "network")
    action = cloud.add_subnet(network, _subnet(body_of(request)))
    return 201, {"action": cloud.render_action(action)}


@route("POST", r"/networks/(?P<rid>[^/]+)/actions/delete_subnet")
def delete_subnet(cloud, request, rid):
    network = cloud.get(cloud.networks, rid, "network")
    action = cloud.delete_subnet(network, _ip_range(body_of(request)))
    return 201, {"action": cloud.render_action(action)}
