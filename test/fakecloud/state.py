"""The emulated project: resources, actions, events, and the scheduler that finishes actions.

Every public method must be called with ``cloud.lock`` held; the HTTP layer takes
it once per request so a request sees and changes a consistent project.
"""

import copy
import dataclasses
import ipaddress
import secrets
import threading
import time
from datetime import datetime, timezone

from fakecloud import catalog
from fakecloud.errors import ApiError, invalid_input, locked, not_found, uniqueness
from fakecloud.pools import Ipv4Pool, Ipv6Pool, free_private_ip

MAX_EVENTS = 10000


@dataclasses.dataclass
class Settings:
    """Tunables that the control API may change and /_fakecloud/reset restores."""

    action_duration: float = 0.2
    action_durations: dict = dataclasses.field(default_factory=dict)
    action_result: str = "success"
    latency: float = 0.0
    rate_limit: int = 3600
    rate_refill: float = 1.0


def now_iso():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def public(record):
    """The record as the API shows it: without the emulator's private ``_`` keys."""
    return {key: value for key, value in record.items() if not key.startswith("_")}


class Cloud:
    def __init__(self, settings, pools, on_event=None):
        self.initial_settings = settings
        self.server_ipv4 = Ipv4Pool(pools["server_ipv4"])
        self.floating_ipv4 = Ipv4Pool(pools["floating_ipv4"])
        self.ipv6 = Ipv6Pool(pools["ipv6"])
        self.on_event = on_event
        self.lock = threading.RLock()
        # One condition for every state change: the scheduler, the event
        # long-poll and the idle wait all sleep on it.
        self.changed = threading.Condition(self.lock)
        self.event_seq = 0
        self.next_id = 1
        with self.lock:
            self.reset()

    def reset(self):
        self.settings = copy.deepcopy(self.initial_settings)
        self.servers = {}
        self.floating_ips = {}
        self.networks = {}
        self.actions = {}
        self.events = []
        # IDs and event sequence numbers keep growing across resets, so a stale
        # ID from an earlier test can never hit a new resource.
        self.changed.notify_all()

    def _new_id(self):
        self.next_id += 1
        return self.next_id

    # ---- actions -------------------------------------------------------------

    def start_action(self, command, resources, lock, apply=None):
        """Create a running action; ``apply`` changes the project when it succeeds.

        ``lock`` is the (type, id) the action locks: further actions on or a
        deletion of that resource answer 423 until this one finishes.
        """
        duration = self.settings.action_durations.get(command, self.settings.action_duration)
        action = {
            "id": self._new_id(),
            "command": command,
            "status": "running",
            "progress": 0,
            "started": now_iso(),
            "finished": None,
            "resources": [{"id": rid, "type": rtype} for rtype, rid in resources],
            "error": None,
            "_begin": time.monotonic(),
            "_end": time.monotonic() + float(duration),
            "_lock": lock,
            "_apply": apply,
            "_result": self.settings.action_result,
        }
        self.actions[action["id"]] = action
        self.changed.notify_all()
        return action

    def render_action(self, action):
        shown = public(action)
        if action["status"] == "running":
            span = max(action["_end"] - action["_begin"], 1e-9)
            shown["progress"] = min(99, int((time.monotonic() - action["_begin"]) / span * 100))
        return shown

    def running_actions(self):
        return [a for a in self.actions.values() if a["status"] == "running"]

    def check_unlocked(self, rtype, rid):
        if any(a["_lock"] == (rtype, rid) for a in self.running_actions()):
            raise locked(rtype)

    def finish_due_actions(self):
        """Complete every action whose time is up; returns seconds until the next one."""
        now = time.monotonic()
        pending = []
        for action in sorted(self.running_actions(), key=lambda a: a["_end"]):
            if action["_end"] <= now:
                self._finish(action)
            else:
                pending.append(action["_end"] - now)
        return min(pending) if pending else None

    def _finish(self, action):
        action["finished"] = now_iso()
        action["progress"] = 100
        if action["_result"] == "error":
            action["status"] = "error"
            action["error"] = {"code": "action_failed", "message": "Action failed"}
        else:
            action["status"] = "success"
            try:
                if action["_apply"]:
                    action["_apply"]()
            except ApiError as refused:  # what changed since the request forbids it now
                action["status"] = "error"
                action["error"] = {"code": refused.code, "message": refused.message}
        action["_apply"] = None
        self.changed.notify_all()

    def run_scheduler(self, stop):
        """Thread body: finish actions exactly when they are due."""
        with self.changed:
            while not stop.is_set():
                self.changed.wait(timeout=self.finish_due_actions())

    # ---- events --------------------------------------------------------------

    def emit(self, kind, ip, old_server_id, new_server_id, network_id=None):
        self.event_seq += 1
        event = {
            "seq": self.event_seq,
            "time": time.time(),
            "kind": kind,
            "ip": ip,
            "network_id": network_id,
            "old_server_id": old_server_id,
            "new_server_id": new_server_id,
        }
        self.events.append(event)
        del self.events[:-MAX_EVENTS]
        if self.on_event:
            self.on_event(event, self._holder_addresses(new_server_id, network_id))
        self.changed.notify_all()

    def _holder_addresses(self, server_id, network_id):
        server = self.servers.get(server_id)
        if server is None:
            return {"ipv4": "", "private_ip": ""}
        entry = _attachment(server, network_id) or {}
        return {"ipv4": server["public_net"]["ipv4"]["ip"], "private_ip": entry.get("ip", "")}

    def events_since(self, since):
        return [e for e in self.events if e["seq"] > since]

    # ---- lookups -------------------------------------------------------------

    def get(self, collection, rid, kind):
        try:
            return collection[int(rid)]
        except (KeyError, ValueError, TypeError):
            raise not_found(kind) from None

    def _check_unique_name(self, collection, name, own_id=None):
        if any(r["name"] == name and r["id"] != own_id for r in collection.values()):
            raise uniqueness()

    def _taken_public(self):
        taken = {s["public_net"]["ipv4"]["ip"] for s in self.servers.values()}
        taken |= {s["public_net"]["ipv6"]["ip"] for s in self.servers.values()}
        return taken | {f["ip"] for f in self.floating_ips.values()}

    # ---- servers -------------------------------------------------------------

    def create_server(self, name, *, server_type, image, location, labels, networks, ipv4=None):
        self._check_unique_name(self.servers, name)
        dc = catalog.datacenter_of(location)
        server_id = self._new_id()
        taken = self._taken_public()
        server = {
            "id": server_id,
            "name": name,
            "status": "initializing",
            "created": now_iso(),
            "public_net": {
                "ipv4": {
                    "id": self._new_id(),
                    "ip": ipv4 or self.server_ipv4.allocate(taken),
                    "blocked": False,
                    "dns_ptr": f"static.{server_id}.example.invalid",
                },
                "ipv6": {
                    "id": self._new_id(),
                    "ip": self.ipv6.allocate(taken),
                    "blocked": False,
                    "dns_ptr": [],
                },
                "floating_ips": [],
                "firewalls": [],
            },
            "private_net": [],
            "server_type": server_type,
            "datacenter": dc,
            "location": location,
            "image": image,
            "iso": None,
            "rescue_enabled": False,
            "locked": False,
            "backup_window": None,
            "outgoing_traffic": 0,
            "ingoing_traffic": 0,
            "included_traffic": 21990232555520,
            "protection": {"delete": False, "rebuild": False},
            "labels": labels,
            "volumes": [],
            "load_balancers": [],
            "primary_disk_size": server_type["disk"],
            "placement_group": None,
        }
        self.servers[server_id] = server
        for network in networks:
            self._attach(server, network, None, [])

        def boot():
            if server_id in self.servers:
                server["status"] = "running"

        action = self.start_action(
            "create_server", [("server", server_id)], ("server", server_id), boot
        )
        return server, action

    def populate(self, servers, floating_ips):
        """
        A crowd beside the load balancer, as a real project holds: ``servers``
        running servers (``crowd-N``) and ``floating_ips`` floating IPs, every
        other one assigned to a crowd server. Created directly, without
        actions, and addressed outside the pools (100.64.0.0/10, which no
        lab routes), so the pools stay for what the tests create.
        """
        crowd = ipaddress.IPv4Network("100.64.0.0/10").hosts()
        created = []
        for _ in range(servers):
            server, action = self.create_server(
                f"crowd-{self.next_id + 1}",
                server_type=catalog.find(catalog.SERVER_TYPES, "cx22"),
                image=catalog.find(catalog.IMAGES, "debian-12"),
                location=catalog.find(catalog.LOCATIONS, "nbg1"),
                labels={"crowd": "true"},
                networks=[],
                ipv4=str(next(crowd)),
            )
            # Created long ago: running, and no create action still under way.
            server["status"] = "running"
            del self.actions[action["id"]]
            created.append(server["id"])
        for index in range(floating_ips):
            fip_id = self._new_id()
            self.floating_ips[fip_id] = {
                "id": fip_id,
                "name": f"crowd-ip-{fip_id}",
                "description": None,
                "ip": str(next(crowd)),
                "type": "ipv4",
                "server": created[index % len(created)] if created and index % 2 else None,
                "dns_ptr": [],
                "home_location": catalog.find(catalog.LOCATIONS, "nbg1"),
                "blocked": False,
                "protection": {"delete": False},
                "labels": {"crowd": "true"},
                "created": now_iso(),
            }
        return {"servers": len(created), "floating_ips": floating_ips}

    def render_server(self, server):
        shown = copy.deepcopy(server)
        shown["public_net"]["floating_ips"] = sorted(
            f["id"] for f in self.floating_ips.values() if f["server"] == server["id"]
        )
        return shown

    def update_server(self, server, name=None, labels=None):
        if name is not None:
            self._check_unique_name(self.servers, name, server["id"])
            server["name"] = name
        if labels is not None:
            server["labels"] = labels

    def delete_server(self, server):
        self.check_unlocked("server", server["id"])
        if server["protection"]["delete"]:
            raise ApiError(403, "protected", "server is delete protected")
        del self.servers[server["id"]]
        for fip in self.floating_ips.values():
            if fip["server"] == server["id"]:
                fip["server"] = None
                self.emit("floating_ip", fip["ip"], server["id"], None)
        for entry in server["private_net"]:
            for alias in entry["alias_ips"]:
                self.emit("alias_ip", alias, server["id"], None, entry["network"])
        return self.start_action("delete_server", [("server", server["id"])], None)

    # ---- server networking ---------------------------------------------------

    def attach(self, server, network, ip, alias_ips):
        self.check_unlocked("server", server["id"])
        self._attach(server, network, ip, alias_ips)
        return self.start_action(
            "attach_to_network",
            [("server", server["id"]), ("network", network["id"])],
            ("server", server["id"]),
        )

    def _attach(self, server, network, ip, alias_ips):
        """Attach at once (the action only reports it) so the IP cannot be handed out twice."""
        if _attachment(server, network["id"]):
            raise ApiError(422, "server_already_attached", "server is already attached")
        taken = self._network_ips(network["id"])
        gateway = network_gateway(network)
        if ip is None:
            ip = self._pick_private_ip(server, network, taken, gateway)
        else:
            self._check_private_ip(network, ip, "ip")
            if ip in taken or ip == gateway:
                raise ApiError(422, "ip_not_available", "the provided network IP is not available")
            taken = taken | {ip}
        self._check_alias_ips(server, network, alias_ips, taken | {ip, gateway})
        server["private_net"].append(
            {
                "network": network["id"],
                "ip": ip,
                "alias_ips": list(alias_ips),
                "mac_address": _mac_address(server["id"], network["id"]),
            }
        )
        for alias in alias_ips:
            self.emit("alias_ip", alias, None, server["id"], network["id"])

    def _pick_private_ip(self, server, network, taken, gateway):
        zone = server["location"]["network_zone"]
        for subnet in network["subnets"]:
            if subnet["type"] in ("cloud", "server") and subnet["network_zone"] == zone:
                ip = free_private_ip(subnet["ip_range"], taken, gateway)
                if ip:
                    return ip
        raise ApiError(422, "no_subnet_available", "no subnet or IP is available for the server")

    def _network_ips(self, network_id, except_server=None):
        taken = set()
        for other in self.servers.values():
            entry = _attachment(other, network_id)
            if entry and other["id"] != except_server:
                taken |= {entry["ip"], *entry["alias_ips"]}
        return taken

    def _check_private_ip(self, network, ip, field):
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            raise invalid_input(field, f"{ip} is not a valid IP address") from None
        if address not in ipaddress.ip_network(network["ip_range"]):
            raise invalid_input(field, f"{ip} is outside the network range {network['ip_range']}")

    def _check_alias_ips(self, server, network, alias_ips, taken):
        if len(set(alias_ips)) != len(alias_ips):
            raise invalid_input("alias_ips", "alias IPs must be unique")
        for alias in alias_ips:
            self._check_private_ip(network, alias, "alias_ips")
            if alias in taken:
                raise ApiError(422, "ip_not_available", f"alias IP {alias} is not available")

    def detach(self, server, network):
        self.check_unlocked("server", server["id"])
        entry = _attachment(server, network["id"])
        if not entry:
            raise ApiError(422, "server_not_attached_to_network", "server is not attached")
        server["private_net"].remove(entry)
        for alias in entry["alias_ips"]:
            self.emit("alias_ip", alias, server["id"], None, network["id"])
        return self.start_action(
            "detach_from_network",
            [("server", server["id"]), ("network", network["id"])],
            ("server", server["id"]),
        )

    def change_alias_ips(self, server, network, alias_ips):
        """Validate now; replace the server's aliases in that network once the action succeeds."""
        self.check_unlocked("server", server["id"])
        entry = _attachment(server, network["id"])
        if not entry:
            raise ApiError(
                422, "server_not_attached_to_network", "server is not attached to the network"
            )
        taken = self._network_ips(network["id"], except_server=server["id"])
        self._check_alias_ips(server, network, alias_ips, taken | {entry["ip"]})
        server_id, network_id = server["id"], network["id"]

        def apply():
            if self.servers.get(server_id) is not server or entry not in server["private_net"]:
                return
            # Two changes may pass the check at their requests, each taking an
            # IP the other frees or takes: the one finishing second fails, so
            # no two servers ever hold one IP.
            clash = set(alias_ips) & self._network_ips(network_id, except_server=server_id)
            if clash:
                raise ApiError(
                    422, "ip_not_available", f"alias IP {sorted(clash)[0]} is not available"
                )
            old, new = entry["alias_ips"], list(alias_ips)
            entry["alias_ips"] = new
            for alias in old:
                if alias not in new:
                    self.emit("alias_ip", alias, server_id, None, network_id)
            for alias in new:
                if alias not in old:
                    self.emit("alias_ip", alias, None, server_id, network_id)

        return self.start_action(
            "change_alias_ips",
            [("server", server_id), ("network", network_id)],
            ("server", server_id),
            apply,
        )

    # ---- floating IPs --------------------------------------------------------

    def create_floating_ip(self, ip_type, name, *, description, labels, home_location, server):
        fip_id = self._new_id()
        name = name or f"floating-ip-{fip_id}"
        self._check_unique_name(self.floating_ips, name)
        pool = self.floating_ipv4 if ip_type == "ipv4" else self.ipv6
        fip = {
            "id": fip_id,
            "name": name,
            "description": description,
            "ip": pool.allocate(self._taken_public()),
            "type": ip_type,
            "server": None,
            "dns_ptr": [],
            "home_location": home_location,
            "blocked": False,
            "protection": {"delete": False},
            "labels": labels,
            "created": now_iso(),
        }
        if ip_type == "ipv4":
            fip["dns_ptr"] = [{"ip": fip["ip"], "dns_ptr": f"static.{fip_id}.example.invalid"}]
        self.floating_ips[fip_id] = fip
        action = self.assign(fip, server) if server else None
        return fip, action

    def update_floating_ip(self, fip, fields):
        if fields.get("name") is not None:
            self._check_unique_name(self.floating_ips, fields["name"], fip["id"])
        for key in ("name", "description", "labels"):
            if key in fields:
                fip[key] = fields[key]

    def delete_floating_ip(self, fip):
        self.check_unlocked("floating_ip", fip["id"])
        if fip["protection"]["delete"]:
            raise ApiError(403, "protected", "floating IP is delete protected")
        del self.floating_ips[fip["id"]]
        if fip["server"]:
            self.emit("floating_ip", fip["ip"], fip["server"], None)

    def assign(self, fip, server):
        self.check_unlocked("floating_ip", fip["id"])
        if fip["server"] == server["id"]:
            raise ApiError(422, "floating_ip_assigned", "floating IP is already assigned")
        return self._move_floating_ip(fip, server["id"], "assign_floating_ip")

    def unassign(self, fip):
        self.check_unlocked("floating_ip", fip["id"])
        return self._move_floating_ip(fip, None, "unassign_floating_ip")

    def _move_floating_ip(self, fip, server_id, command):
        def apply():
            if self.floating_ips.get(fip["id"]) is not fip:
                return
            if server_id is not None and server_id not in self.servers:
                return
            old = fip["server"]
            fip["server"] = server_id
            if old != server_id:
                self.emit("floating_ip", fip["ip"], old, server_id)

        resources = [("floating_ip", fip["id"])]
        holder = server_id or fip["server"]
        if holder:
            resources.insert(0, ("server", holder))
        return self.start_action(command, resources, ("floating_ip", fip["id"]), apply)

    def protect_floating_ip(self, fip, delete):
        self.check_unlocked("floating_ip", fip["id"])
        fip["protection"]["delete"] = delete
        return self.start_action(
            "change_protection", [("floating_ip", fip["id"])], ("floating_ip", fip["id"])
        )

    # ---- networks ------------------------------------------------------------

    def create_network(self, name, ip_range, *, subnets, routes, labels, expose_routes):
        self._check_unique_name(self.networks, name)
        network = {
            "id": self._new_id(),
            "name": name,
            "ip_range": ip_range,
            "subnets": [],
            "routes": routes,
            "servers": [],
            "load_balancers": [],
            "protection": {"delete": False},
            "labels": labels,
            "created": now_iso(),
            "expose_routes_to_vswitch": expose_routes,
        }
        for subnet in subnets:
            self._add_subnet(network, subnet)
        self.networks[network["id"]] = network
        return network

    def render_network(self, network):
        shown = copy.deepcopy(network)
        shown["servers"] = sorted(
            s["id"] for s in self.servers.values() if _attachment(s, network["id"])
        )
        return shown

    def update_network(self, network, fields):
        if fields.get("name") is not None:
            self._check_unique_name(self.networks, fields["name"], network["id"])
        for key in ("name", "labels", "expose_routes_to_vswitch"):
            if key in fields:
                network[key] = fields[key]

    def delete_network(self, network):
        self.check_unlocked("network", network["id"])
        for server in self.servers.values():
            entry = _attachment(server, network["id"])
            if entry:
                server["private_net"].remove(entry)
        del self.networks[network["id"]]

    def add_subnet(self, network, subnet):
        self.check_unlocked("network", network["id"])
        self._add_subnet(network, subnet)
        return self.start_action(
            "add_subnet", [("network", network["id"])], ("network", network["id"])
        )

    def _add_subnet(self, network, subnet):
        outer = ipaddress.ip_network(network["ip_range"])
        try:
            inner = ipaddress.ip_network(subnet["ip_range"])
        except ValueError:
            raise invalid_input("ip_range", "not a valid IP range") from None
        if inner.version != outer.version or not inner.subnet_of(outer):
            raise invalid_input("ip_range", "subnet must be inside the network's ip_range")
        for existing in network["subnets"]:
            if inner.overlaps(ipaddress.ip_network(existing["ip_range"])):
                raise ApiError(422, "networks_overlap", "subnet overlaps an existing subnet")
        network["subnets"].append(
            {
                "type": subnet["type"],
                "ip_range": str(inner),
                "network_zone": subnet["network_zone"],
                "gateway": network_gateway(network),
                "vswitch_id": subnet.get("vswitch_id"),
            }
        )

    def delete_subnet(self, network, ip_range):
        self.check_unlocked("network", network["id"])
        remaining = [s for s in network["subnets"] if s["ip_range"] != ip_range]
        if len(remaining) == len(network["subnets"]):
            raise invalid_input("ip_range", "no such subnet")
        network["subnets"] = remaining
        return self.start_action(
            "delete_subnet", [("network", network["id"])], ("network", network["id"])
        )

    # ---- debugging -----------------------------------------------------------

    def holders(self):
        """
        Who holds each address: {"floating_ips": {id: server id or None},
        "alias_ips": {ip: server id}}, a lab's view that costs the project
        nothing (no request of its rate limit) and grows with the addresses only.
        """
        alias_ips = {
            alias: server["id"]
            for server in self.servers.values()
            for entry in server["private_net"]
            for alias in entry["alias_ips"]
        }
        floating_ips = {str(fip["id"]): fip["server"] for fip in self.floating_ips.values()}
        return {"floating_ips": floating_ips, "alias_ips": alias_ips}

    def dump(self):
        return {
            "servers": [self.render_server(s) for s in self.servers.values()],
            "floating_ips": [public(f) for f in self.floating_ips.values()],
            "networks": [self.render_network(n) for n in self.networks.values()],
            "actions": [self.render_action(a) for a in self.actions.values()],
            "settings": dataclasses.asdict(self.settings),
        }


def _attachment(server, network_id):
    return next((e for e in server["private_net"] if e["network"] == network_id), None)


def network_gateway(network):
    """Hetzner routes every subnet through the network range's first address."""
    return str(next(ipaddress.ip_network(network["ip_range"]).hosts()))


def _mac_address(server_id, network_id):
    """Stable and distinct per attachment, in Hetzner's 86:00:00 prefix."""
    return f"86:00:00:{(server_id >> 8) & 0xFF:02x}:{server_id & 0xFF:02x}:{network_id & 0xFF:02x}"


def random_password():
    return secrets.token_urlsafe(15)
