"""Address pools the emulator hands out public addresses from."""

import ipaddress
import itertools

from fakecloud.errors import ApiError


class Ipv4Pool:
    def __init__(self, cidr):
        self.network = ipaddress.IPv4Network(cidr)

    def allocate(self, taken):
        for host in self.network.hosts():
            if str(host) not in taken:
                return str(host)
        raise PoolExhausted(str(self.network))


class Ipv6Pool:
    """Carves /64 networks out of a larger prefix, like Hetzner gives each server one."""

    def __init__(self, cidr):
        self.network = ipaddress.IPv6Network(cidr)
        if self.network.prefixlen > 64:
            raise ValueError(f"IPv6 pool {cidr} is smaller than a /64")

    def allocate(self, taken):
        count = 1 << (64 - self.network.prefixlen)
        # Index 0 would be the pool's own base address; start at 1 so the
        # addresses look like real, distinct /64s.
        for index in itertools.islice(itertools.count(1), count - 1):
            subnet = f"{self.network.network_address + (index << 64)}/64"
            if subnet not in taken:
                return subnet
        raise PoolExhausted(str(self.network))


class PoolExhausted(ApiError):
    def __init__(self, pool):
        super().__init__(503, "resource_unavailable", f"address pool {pool} is exhausted")


def free_private_ip(subnet, taken, gateway):
    """First address of subnet that no server and no gateway uses.

    The subnet's first host is skipped too: Hetzner hands out .2 onwards.
    """
    for host in itertools.islice(ipaddress.ip_network(subnet).hosts(), 1, None):
        if str(host) not in taken and str(host) != gateway:
            return str(host)
    return None
