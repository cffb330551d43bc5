"""``schema --lua`` writes the schema the plugin server reports to Kong, field by field.

Two readings of the Lua text: the project's own small reader (tests/deploy/lua_table.py),
which checks the subset the writer produces strictly, key order included; and, where
nginx's Lua module is installed, the real LuaJIT loading the file."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kong_cilium_identity.kong.kong_schema import config_field, validate_config
from kong_cilium_identity.kong.lua_schema import lua_string, render_schema
from kong_cilium_identity.plugin import plugin_info
from tests.deploy.helpers import ROOT, shipped_plugin_configs
from tests.deploy.lua_table import LuaSyntaxError, Ref, read_chunk


def differences(lua: Any, dumped: Any, path: str = "$") -> list[str]:
    """Every place where the two trees differ: keys, key order, types and values."""
    if isinstance(dumped, dict):
        if not isinstance(lua, dict):
            return [f"{path}: Lua has {type(lua).__name__}, the dump a record"]
        if list(lua) != list(dumped):
            return [f"{path}: keys {list(lua)} != {list(dumped)}"]
        return [d for key in dumped for d in differences(lua[key], dumped[key], f"{path}.{key}")]
    if isinstance(dumped, list):
        if not isinstance(lua, list) or len(lua) != len(dumped):
            return [f"{path}: {lua!r} != {dumped!r}"]
        return [
            d
            for i, (a, b) in enumerate(zip(lua, dumped, strict=True))
            for d in differences(a, b, f"{path}[{i}]")
        ]
    if type(lua) is not type(dumped) or lua != dumped:
        return [f"{path}: {lua!r} ({type(lua).__name__}) != {dumped!r} ({type(dumped).__name__})"]
    return []


def cli_lua() -> str:
    done = subprocess.run(
        [sys.executable, "-m", "kong_cilium_identity.cli", "schema", "--lua"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout


def test_cli_schema_lua_matches_the_dumped_schema_field_by_field() -> None:
    requires, schema = read_chunk(cli_lua())
    dumped = plugin_info()["Schema"]
    assert requires == {"typedefs": "kong.db.schema.typedefs"}
    assert list(schema) == ["name", "fields"]
    assert schema["name"] == dumped["name"] == "cilium-identity"
    protocols, *fields = schema["fields"]
    assert protocols == {"protocols": Ref("typedefs.protocols_http")}
    assert differences(fields, dumped["fields"]) == []
    leaves = str(dumped).count("'type'")
    assert leaves > 80  # the whole tree was compared, nested records included


def test_the_comparison_sees_a_changed_field() -> None:
    dumped = plugin_info()["Schema"]
    changed = copy.deepcopy(dumped)
    config = changed["fields"][0]["config"]["fields"]
    config[0]["mode"]["default"] = "monitor"
    config[3]["lookup_timeout"]["between"] = [0.001, 30.0]  # 30 (integer) became a float
    _, schema = read_chunk(render_schema(changed))
    found = differences(schema["fields"][1:], dumped["fields"])
    assert len(found) == 2, found
    assert "mode.default" in found[0] and "lookup_timeout.between[1]" in found[1]


def test_lua_schema_validates_shipped_configs_like_the_dump() -> None:
    """Kong's rules applied with the Lua file's record give what the dump's record gives."""
    _, schema = read_chunk(cli_lua())
    from_lua = config_field({"name": schema["name"], "fields": schema["fields"][1:]})
    from_dump = config_field(plugin_info()["Schema"])
    configs = shipped_plugin_configs()
    assert len(configs) >= 3
    for where, config in configs:
        assert validate_config(from_lua, config) == validate_config(from_dump, config), where


@pytest.mark.parametrize("text", ["plain", 'quote " and \\ backslash', "tab\tnew\nline", "é — ✓"])
def test_strings_round_trip(text: str) -> None:
    assert read_chunk(f"return {{ {lua_string(text)} }}")[1] == [text]


def test_reader_rejects_what_it_does_not_know() -> None:
    for bad in ["return { a = 1, 2 }", "return { f() }", "return { a = 1 } junk", "x = 1"]:
        with pytest.raises(LuaSyntaxError):
            read_chunk(bad)


def test_documented_konnect_file_name() -> None:
    text = (ROOT / "docs" / "install.md").read_text(encoding="utf-8")
    assert "kong-cilium-identity schema --lua > schema.lua" in text


# ---------------------------------------------------------------- under nginx's LuaJIT

NGINX = Path("/usr/sbin/nginx")
NGINX_MODULES = Path("/usr/lib/nginx/modules")
LOADER = r"""
load_module MODULES/ndk_http_module.so;
load_module MODULES/ngx_http_lua_module.so;
pid nginx.pid;
events {}
http {
  init_by_lua_block {
    -- Kong's typedefs module is not here: a stand-in whose value names the typedef
    package.preload["kong.db.schema.typedefs"] = function()
      return { protocols_http = { typedef = "protocols_http" } }
    end
    local function encode(value)
      local kind = type(value)
      if kind == "table" then
        if next(value) == nil then return "[]" end
        local parts = {}
        if #value > 0 then
          for i = 1, #value do parts[i] = encode(value[i]) end
          return "[" .. table.concat(parts, ",") .. "]"
        end
        for key, item in pairs(value) do parts[#parts + 1] = encode(key) .. ":" .. encode(item) end
        return "{" .. table.concat(parts, ",") .. "}"
      elseif kind == "string" then
        return '"' .. value:gsub('[%c"\\]', function(c)
          return string.format("\\u%04x", c:byte())
        end) .. '"'
      elseif kind == "number" then
        return string.format("%.17g", value)
      end
      return tostring(value)
    end
    local ok, result = pcall(dofile, "SCHEMA")
    local out = io.open("OUT", "w")
    out:write(ok and encode(result) or ("ERROR " .. tostring(result)))
    out:close()
    os.exit(0)
  }
}
"""


def test_schema_lua_loads_under_nginx_luajit(tmp_path: Path) -> None:
    """The real LuaJIT of nginx's Lua module loads the file; the table it returns equals
    the dumped schema (key order aside, which the reader above checks)."""
    modules = [NGINX_MODULES / "ndk_http_module.so", NGINX_MODULES / "ngx_http_lua_module.so"]
    if not NGINX.exists() or not all(m.exists() for m in modules):
        pytest.skip("nginx with libnginx-mod-http-lua is not installed (.ci/run installs it)")
    schema_file, out = tmp_path / "schema.lua", tmp_path / "out.json"
    schema_file.write_text(cli_lua())
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        LOADER.replace("MODULES", str(NGINX_MODULES))
        .replace("SCHEMA", str(schema_file))
        .replace("OUT", str(out))
    )
    done = subprocess.run(
        [
            str(NGINX),
            "-p",
            str(tmp_path),
            "-c",
            str(conf),
            "-e",
            "stderr",
            "-g",
            "daemon off; master_process off;",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.exists(), done.stderr
    text = out.read_text(encoding="utf-8")
    assert not text.startswith("ERROR"), text
    loaded = json.loads(text)
    dumped = plugin_info()["Schema"]
    assert loaded["name"] == dumped["name"]
    assert loaded["fields"][0] == {"protocols": {"typedef": "protocols_http"}}
    assert loaded["fields"][1:] == dumped["fields"]
