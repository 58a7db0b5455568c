"""Read-only catalog: locations, datacenters, server types and images.

The real API serves hundreds of these; the emulator serves a handful that the
formula, its tests and the hcloud CLI resolve by name.
"""

_CREATED = "2024-01-01T00:00:00Z"

# (id, name, city, country, latitude, longitude, network zone, datacenter number)
_LOCATIONS = [
    (1, "fsn1", "Falkenstein", "DE", 50.47612, 12.370071, "eu-central", 14),
    (2, "nbg1", "Nuremberg", "DE", 49.452102, 11.076665, "eu-central", 3),
    (3, "hel1", "Helsinki", "FI", 60.169855, 24.938379, "eu-central", 2),
    (4, "ash", "Ashburn, VA", "US", 39.045821, -77.487073, "us-east", 1),
    (5, "hil", "Hillsboro, OR", "US", 45.54222, -122.951924, "us-west", 1),
    (6, "sin", "Singapore", "SG", 1.283333, 103.833333, "ap-southeast", 1),
]

# (id, name, cores, memory GB, disk GB, cpu type, architecture)
_SERVER_TYPES = [
    (22, "cpx11", 2, 2.0, 40, "shared", "x86"),
    (104, "cx22", 2, 4.0, 40, "shared", "x86"),
    (114, "cx23", 2, 4.0, 40, "shared", "x86"),
    (45, "cax11", 2, 4.0, 40, "shared", "arm"),
]

# (id, name, os flavor, os version, description)
_IMAGES = [
    (161547269, "ubuntu-24.04", "ubuntu", "24.04", "Ubuntu 24.04"),
    (114690387, "debian-12", "debian", "12", "Debian 12"),
]


def _price(amount):
    return {"net": f"{amount:.4f}", "gross": f"{amount * 1.19:.4f}"}


def _location(row):
    loc_id, name, city, country, lat, lon, zone, _ = row
    return {
        "id": loc_id,
        "name": name,
        "description": f"{city} DC Park 1",
        "city": city,
        "country": country,
        "latitude": lat,
        "longitude": lon,
        "network_zone": zone,
    }


def _server_type(row):
    type_id, name, cores, memory, disk, cpu_type, arch = row
    return {
        "id": type_id,
        "name": name,
        "description": name.upper(),
        "category": "regular_purpose",
        "cores": cores,
        "memory": memory,
        "disk": disk,
        "deprecated": False,
        "cpu_type": cpu_type,
        "architecture": arch,
        "storage_type": "local",
        "locations": [
            {
                "id": loc[0],
                "name": loc[1],
                "deprecation": None,
                "available": True,
                "recommended": True,
            }
            for loc in _LOCATIONS
        ],
        "prices": [
            {
                "location": loc[1],
                "included_traffic": 21990232555520,
                "price_hourly": _price(0.0076),
                "price_monthly": _price(4.59),
                "price_per_tb_traffic": _price(1.0),
            }
            for loc in _LOCATIONS
        ],
    }


def _image(row):
    image_id, name, flavor, version, description = row
    return {
        "id": image_id,
        "type": "system",
        "status": "available",
        "name": name,
        "description": description,
        "image_size": None,
        "disk_size": 5,
        "created": _CREATED,
        "created_from": None,
        "bound_to": None,
        "os_flavor": flavor,
        "os_version": version,
        "rapid_deploy": True,
        "protection": {"delete": False},
        "deprecated": None,
        "deleted": None,
        "labels": {},
        "architecture": "x86",
    }


LOCATIONS = [_location(row) for row in _LOCATIONS]
SERVER_TYPES = [_server_type(row) for row in _SERVER_TYPES]
IMAGES = [_image(row) for row in _IMAGES]
_TYPE_IDS = [row[0] for row in _SERVER_TYPES]
DATACENTERS = [
    {
        "id": loc["id"],
        "name": f"{loc['name']}-dc{row[7]}",
        "description": f"{loc['city']} DC {row[7]}",
        "location": loc,
        "server_types": {
            "supported": _TYPE_IDS,
            "available": _TYPE_IDS,
            "available_for_migration": _TYPE_IDS,
        },
    }
    for loc, row in zip(LOCATIONS, _LOCATIONS, strict=True)
]


def find(items, ref):
    """Find a catalog entry by ID or name (the API accepts both in requests)."""
    for item in items:
        if str(item["id"]) == str(ref) or item["name"] == ref:
            return item
    return None


def datacenter_of(location):
    return next(dc for dc in DATACENTERS if dc["location"]["id"] == location["id"])
