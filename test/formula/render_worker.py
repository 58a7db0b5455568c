"""
Renders the formula's haproxy.cfg and keepalived.conf for many pillars in
one Salt process, as a node would render them (map.jinja, the hcloud_lb
module, Salt's own Jinja), and validates each pillar first as the states do.

    python render_worker.py MINION_CONFIG

reads lines of JSON lists of cases and answers each with a line of results.
Each case is {"id": minion id, "pillar": {...}}; each result is {"errors":
[...]} for a refused pillar, else {"errors": [], "haproxy": text,
"keepalived": text}. A fresh salt-call per case costs about a
second; one process renders hundreds of cases in that time, which is what
lets the tests cover the whole option space. The pillar and grains are
swapped in place between cases: Salt's loader keeps references to them.
"""

import json
import sys
from pathlib import Path

import salt.client
import salt.config
import salt.fileclient

REPO = Path(__file__).resolve().parents[2]
SETTINGS = '{%- from "hcloud_lb/map.jinja" import hcloud_lb with context %}{{ hcloud_lb | json }}'
TEMPLATES = {
    "haproxy": "hcloud_lb/haproxy/files/haproxy.cfg.jinja",
    "keepalived": "hcloud_lb/keepalived/files/keepalived.conf.jinja",
}


def main(config):
    opts = salt.config.minion_config(config)
    caller = salt.client.Caller(mopts=opts)
    functions = caller.sminion.functions
    pillars = {
        id(d): d for d in (functions.opts["pillar"], opts["pillar"], functions.pack["__pillar__"])
    }
    grains = {
        id(d): d for d in (functions.opts["grains"], opts["grains"], functions.pack["__grains__"])
    }
    templates = {name: (REPO / path).read_text() for name, path in TEMPLATES.items()}
    # One file client for every render: Salt's Jinja loader would start one each time.
    context = {"fileclient": salt.fileclient.get_file_client(functions.opts)}
    # A line of cases in, a line of results out, until stdin ends.
    for line in sys.stdin:
        results = []
        for case in json.loads(line):
            for pillar in pillars.values():
                pillar.clear()
                pillar.update(case["pillar"])
            for grain in grains.values():
                grain["id"] = case["id"]
            functions.pack["__context__"].clear()
            results.append(render(functions, templates, context))
        print(json.dumps(results), flush=True)


def render(functions, templates, context):
    # The settings as map.jinja merges them, validated as libvalidate.jinja does.
    settings = json.loads(apply(functions, SETTINGS, {**context, "tpldir": "hcloud_lb"}))
    errors = functions["hcloud_lb.validate"](settings)
    if errors:
        return {"errors": errors}
    result = {"errors": []}
    for name, text in templates.items():
        tpldir = str(Path(TEMPLATES[name]).parent)
        result[name] = apply(functions, text, {**context, "tpldir": tpldir})
    return result


def apply(functions, text, context):
    return functions["file.apply_template_on_contents"](
        text, template="jinja", context=context, defaults={}, saltenv="base"
    )


if __name__ == "__main__":
    main(sys.argv[1])
