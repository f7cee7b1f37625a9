#!/usr/bin/env python3
"""Write the nginx + Lua peer gateway of the tutti benchmark as a config.

Usage: render.py CONFIG OUTDIR

CONFIG is the bench config shared by every gateway of the benchmark (port,
workers, deadline_ms, calls). OUTDIR/nginx.conf is written for Debian's
nginx with libnginx-mod-http-lua and lua-cjson. Start it with
`nginx -p OUTDIR -c OUTDIR/nginx.conf`. It runs in the foreground and keeps
its pid file, temp files and error log in OUTDIR.

GET /fan sends one subrequest per call with ngx.location.capture_multi.
Each subrequest goes to an internal location `/_cN` that proxies to an
upstream block with a keep-alive pool. The Lua code decodes every body with
cjson and responds with 200 and the merged object re-encoded by cjson, or
with the contract's 502 or 504 error object.

nginx cannot proxy to HTTP/2 upstreams, so an h2c:// call makes this script
exit with status 3. An invalid config exits with status 2.
"""

import json
import os
import sys
import urllib.parse

MODULES_DIR = "/usr/lib/nginx/modules"

# Characters that would end or change an nginx directive argument.
UNSAFE_URL_CHARS = set('"\'\\$;{}#') | {" ", "\t", "\n", "\r"}


class ConfigError(Exception):
    """An invalid bench config; the message names the file and the value."""


def lua_string(text):
    """Quote text as a Lua 5.1 string literal (decimal escapes for bytes)."""
    out = ['"']
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char in '"\\' or byte < 0x20 or byte > 0x7E:
            out.append("\\%d" % byte)
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def parse_call(index, call, path):
    """Return (name, host, port, uri) for one calls[] entry of the config."""
    if not isinstance(call, dict):
        raise ConfigError("%s: calls[%d] is not an object" % (path, index))
    name = call.get("name")
    url = call.get("url")
    if not isinstance(name, str) or name == "":
        raise ConfigError("%s: calls[%d] has no name" % (path, index))
    if not isinstance(url, str):
        raise ConfigError("%s: call %s has no url" % (path, name))
    if url.startswith("h2c://"):
        raise NotImplementedError(
            "call %s: h2c:// is not supported by the nginx-lua peer, "
            "because nginx's proxy module cannot talk HTTP/2 to an "
            "upstream (%s)" % (name, url))
    if not url.startswith("http://"):
        raise ConfigError("%s: call %s: unsupported URL %r "
                          "(expected http://)" % (path, name, url))
    if UNSAFE_URL_CHARS & set(url):
        raise ConfigError("%s: call %s: URL %r contains a character that "
                          "nginx.conf cannot hold unquoted "
                          "(space, quote, backslash, $ ; { } #)"
                          % (path, name, url))

    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or 80
    except ValueError as err:
        raise ConfigError("%s: call %s: %s" % (path, name, err)) from None
    if not parts.hostname:
        raise ConfigError("%s: call %s: URL %r has no host"
                          % (path, name, url))
    uri = parts.path or "/"
    if parts.query:
        uri += "?" + parts.query
    return name, parts.hostname, port, uri


def load_config(path):
    """Read the bench config and return it with calls parsed."""
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as err:
        raise ConfigError("cannot read %s: %s" % (path, err)) from None

    port = config.get("port")
    workers = config.get("workers", 1)
    deadline_ms = config.get("deadline_ms")
    calls = config.get("calls")
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError("%s: invalid port %r" % (path, port))
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError("%s: invalid workers %r" % (path, workers))
    if not isinstance(deadline_ms, int) or deadline_ms < 1:
        raise ConfigError("%s: invalid deadline_ms %r" % (path, deadline_ms))
    if not isinstance(calls, list) or not calls:
        raise ConfigError("%s: no calls" % path)

    parsed = [parse_call(i, call, path) for i, call in enumerate(calls)]
    names = [name for name, _, _, _ in parsed]
    if len(set(names)) != len(names):
        raise ConfigError("%s: call names are not unique" % path)
    return {"port": port, "workers": workers, "deadline_ms": deadline_ms,
            "calls": parsed}


def render_upstreams(calls):
    """Return one upstream block with a keep-alive pool per call."""
    lines = []
    for index, (_, host, port, _) in enumerate(calls):
        lines.append("""\
    upstream fan_c%d {
        server %s:%d max_fails=0;
        keepalive 256;
        keepalive_requests 1000000;
        keepalive_timeout 90s;
    }
""" % (index, host, port))
    return "\n".join(lines)


def render_call_locations(calls, deadline_ms):
    """Return one internal proxy location per call, after a shared comment."""
    lines = ["""\
        # One internal location per call, the target of the /fan
        # subrequests.
        # - The proxy timeouts apply to each connect, write and read
        #   separately, so a call can take longer than deadline_ms in total
        #   (for example a slow connect followed by a slow answer).
        # - With one server per upstream, proxy_next_upstream error retries
        #   only a request that failed on a cached keep-alive connection
        #   (one that the downstream closed), on a new connection.
        # - The header filter also runs for nginx's own 502 and 504
        #   (connect failure, invalid response, proxy timeout). Those have
        #   no upstream header time: $upstream_header_time, one entry per
        #   attempt, then ends with "-".
"""]
    for index, (_, host, port, uri) in enumerate(calls):
        lines.append("""\
        location = /_c%(index)d {
            internal;
            proxy_pass http://fan_c%(index)d%(uri)s;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host "%(host)s:%(port)d";
            proxy_pass_request_headers off;
            proxy_pass_request_body off;
            proxy_connect_timeout %(deadline)dms;
            proxy_send_timeout %(deadline)dms;
            proxy_read_timeout %(deadline)dms;
            proxy_next_upstream error;
            proxy_max_temp_file_size 0;
            header_filter_by_lua_block {
                local time = ngx.var.upstream_header_time
                ngx.ctx.answered = time ~= nil and time:sub(-1) ~= "-"
            }
        }
""" % {"index": index, "uri": uri, "host": host, "port": port,
       "deadline": deadline_ms})
    return "\n".join(lines)


def render_lua(calls):
    """Return the init_by_lua_block and the /fan location."""
    uris = ", ".join(lua_string("/_c%d" % i) for i in range(len(calls)))
    names = ", ".join(lua_string(name) for name, _, _, _ in calls)
    init = """\
    init_by_lua_block {
        cjson_safe = require "cjson.safe"
        FAN_URIS = { %(uris)s }
        FAN_NAMES = { %(names)s }
    }
""" % {"uris": uris, "names": names}

    fan = """\
        location = /fan {
            content_by_lua_block {
                local function send(status, body)
                    ngx.status = status
                    ngx.header.content_type = "application/json"
                    ngx.header.content_length = #body
                    ngx.print(body)
                    return ngx.exit(status)
                end

                if ngx.req.get_method() ~= "GET" then
                    ngx.header.allow = "GET"
                    return send(405, '{"error":{"kind":"method"}}')
                end

                -- Each subrequest gets its own ngx.ctx table, where the
                -- call location's header filter marks a downstream answer.
                local contexts = {}
                local requests = {}
                for i, uri in ipairs(FAN_URIS) do
                    contexts[i] = {}
                    requests[i] = { uri, { ctx = contexts[i] } }
                end

                -- capture_multi returns only when every subrequest has
                -- ended, and it cannot cancel one: a failed call is
                -- answered after its slowest sibling (at worst at the
                -- proxy timeout, which is deadline_ms), and a call whose
                -- sibling failed still runs to its end downstream.
                local results = { ngx.location.capture_multi(requests) }

                local merged = {}
                local timed_out = false
                for i, res in ipairs(results) do
                    local name = FAN_NAMES[i]
                    local status = res.status
                    local answered = contexts[i].answered
                    local failure
                    if not answered and status == 504 then
                        timed_out = true
                    elseif not answered then
                        failure = { call = name, kind = "connect" }
                    elseif status < 200 or status > 299 then
                        failure = { call = name, kind = "status",
                                    status = status }
                    elseif res.truncated then
                        failure = { call = name, kind = "bad_response" }
                    else
                        local value = cjson_safe.decode(res.body)
                        if value == nil then
                            failure = { call = name, kind = "bad_response" }
                        else
                            merged[name] = value
                        end
                    end
                    if failure then
                        return send(502, cjson_safe.encode({ error = failure }))
                    end
                end
                if timed_out then
                    return send(504, '{"error":{"kind":"deadline"}}')
                end
                return send(200, cjson_safe.encode(merged))
            }
        }
"""
    return init, fan


def render(config, outdir):
    calls = config["calls"]
    deadline_ms = config["deadline_ms"]
    lua_init, lua_fan = render_lua(calls)
    return """\
# Generated by tests/bench/peers/nginx-lua/render.py; edits are overwritten.
load_module %(modules)s/ndk_http_module.so;
load_module %(modules)s/ngx_http_lua_module.so;

daemon off;
worker_processes %(workers)d;
pid %(outdir)s/nginx.pid;
error_log %(outdir)s/error.log warn;

events {
    worker_connections 16384;
}

http {
    access_log off;
    default_type application/json;
    client_body_temp_path %(outdir)s/temp/client_body;
    proxy_temp_path %(outdir)s/temp/proxy;
    fastcgi_temp_path %(outdir)s/temp/fastcgi;
    uwsgi_temp_path %(outdir)s/temp/uwsgi;
    scgi_temp_path %(outdir)s/temp/scgi;

    keepalive_timeout 120s;
    keepalive_requests 1000000;

%(lua_init)s
%(upstreams)s
    server {
        listen 127.0.0.1:%(port)d backlog=4096;

%(fan)s
%(call_locations)s
        location / {
            return 404 '{"error":{"kind":"not_found"}}';
        }
    }
}
""" % {
        "modules": MODULES_DIR,
        "workers": config["workers"],
        "outdir": outdir,
        "lua_init": lua_init,
        "upstreams": render_upstreams(calls),
        "port": config["port"],
        "fan": lua_fan,
        "call_locations": render_call_locations(calls, deadline_ms),
    }


def main(argv):
    if len(argv) != 3:
        print("usage: render.py CONFIG OUTDIR", file=sys.stderr)
        return 2
    config_path, outdir = argv[1], os.path.abspath(argv[2])
    try:
        config = load_config(config_path)
    except ConfigError as err:
        print("render.py: %s" % err, file=sys.stderr)
        return 2
    except NotImplementedError as err:
        print("render.py: %s" % err, file=sys.stderr)
        return 3

    os.makedirs(os.path.join(outdir, "temp"), exist_ok=True)
    with open(os.path.join(outdir, "nginx.conf"), "w", encoding="utf-8") as f:
        f.write(render(config, outdir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
