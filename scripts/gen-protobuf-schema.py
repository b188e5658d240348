#!/usr/bin/env python3
"""Generates crates/visor-apiserver/src/protobuf/schema.rs.

Kubernetes clients send request bodies as protobuf, but the .proto files are not at hand, so
the wire schema is recovered from two crates in the cargo registry:

* k8s-pb: prost structs whose `#[prost(..., tag = "N")]` attributes give each field's wire
  type and number, and whose field types name the nested messages; its `impl Resource`
  blocks give the apiVersion and kind of top-level objects.
* k8s-openapi (v1_33): its Deserialize impls map every JSON name to a Rust field
  (`"hostIPC" => Field::Key_host_ipc`), which gives the exact JSON spelling, and its structs
  show which embedded Go structs are inlined in JSON (Volume's VolumeSource, Probe's
  ProbeHandler, ...).

Usage: python3 scripts/gen-protobuf-schema.py [--registry DIR] [--out FILE] [--check]

The registry defaults to ~/.cargo/registry/src/*/. Both crates must be there: building the
workspace fetches k8s-openapi, and k8s-pb is a dev-dependency of visor-apiserver.
--check exits non-zero when the output file differs from what would be generated.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field

PB_CRATE = "k8s-pb-0.9.0"
OPENAPI_CRATE = "k8s-openapi-0.29.0"
OPENAPI_VERSION_DIR = "v1_33"
OUT_DEFAULT = "crates/visor-apiserver/src/protobuf/schema.rs"

# Messages whose Go types marshal to JSON by hand instead of field by field. Their wire
# layout comes from k8s-pb like every other message; only the JSON form is special.
SPECIAL_BY_NAME = {
    "k8s.io.apimachinery.pkg.apis.meta.v1.Time": "Time",
    "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime": "MicroTime",
    "k8s.io.apimachinery.pkg.apis.meta.v1.Duration": "Duration",
    "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1": "RawJson",
    "k8s.io.apimachinery.pkg.api.resource.Quantity": "Quantity",
    "k8s.io.apimachinery.pkg.api.resource.QuantityValue": "Quantity",
    "k8s.io.apimachinery.pkg.util.intstr.IntOrString": "IntOrString",
    "k8s.io.apimachinery.pkg.runtime.RawExtension": "RawJson",
}
# apiextensions' JSON-schema helper types exist in every served version of that group.
SPECIAL_BY_SUFFIX = {
    ".Json": "RawJson",
    ".JsonSchemaPropsOrArray": "SchemaOrArray",
    ".JsonSchemaPropsOrBool": "SchemaOrBool",
    ".JsonSchemaPropsOrStringArray": "SchemaOrStringArray",
}
SPECIAL_SUFFIX_PACKAGE = "k8s.io.apiextensions_apiserver."

# meta/v1 kinds that client-go encodes under whatever group version the request goes to
# (DeleteOptions in a pod delete is sent as "v1", in a policy request as "policy/v1", ...).
ANY_VERSION_META_SUFFIX = "Options"

SCALARS = {
    "string": "String",
    "int32": "Int32",
    "int64": "Int64",
    "uint32": "Uint32",
    "uint64": "Uint64",
    "bool": "Bool",
    "double": "Double",
    "float": "Float",
    "bytes": "Bytes",
}


@dataclass
class PbField:
    rust: str  # Rust field name without r#
    tag: int
    kind: str  # scalar name or "message"
    label: str  # optional / repeated / map
    map_key: str | None = None
    map_value: str | None = None
    type_path: str | None = None  # resolved full name of the message type
    doc_first_word: str | None = None


@dataclass
class PbMessage:
    package: str  # e.g. k8s.io.api.core.v1
    module: tuple[str, ...]  # e.g. ("api", "core", "v1")
    name: str
    fields: list[PbField] = field(default_factory=list)

    @property
    def full(self) -> str:
        return f"{self.package}.{self.name}"


def find_crate(registry: str | None, crate: str) -> str:
    if registry:
        path = os.path.join(registry, crate)
        if os.path.isdir(path):
            return path
        sys.exit(f"{crate} not found under {registry}")
    pattern = os.path.expanduser(f"~/.cargo/registry/src/*/{crate}")
    hits = sorted(glob.glob(pattern))
    if not hits:
        sys.exit(f"{crate} not found ({pattern}); run `cargo fetch` in the workspace first")
    return hits[0]


def normalize(name: str) -> str:
    """A spelling-insensitive key: prost and k8s-openapi split acronyms differently."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


# ---------------------------------------------------------------- k8s-pb


PROST_ATTR = re.compile(r"^\s*#\[prost\((.*)\)\]\s*$")
STRUCT_OPEN = re.compile(r"^pub struct (\w+) \{(\})?\s*$")
FIELD_START = re.compile(r"^\s*pub (?:r#)?(\w+):(.*)$")
RESOURCE_IMPL = re.compile(
    r"impl crate::Resource for (\w+) \{\s*const API_VERSION: &'static str = \"([^\"]*)\";"
    r".*?const KIND: &'static str = \"([^\"]*)\";",
    re.S,
)


def parse_prost_attr(attr: str) -> tuple[str, str, int, str | None, str | None]:
    tag_match = re.search(r'tag = "(\d+)"', attr)
    if not tag_match:
        raise ValueError(f"no tag in #[prost({attr})]")
    tag = int(tag_match.group(1))
    map_match = re.match(r'\s*(?:btree_map|hash_map) = "(\w+), (\w+)"', attr)
    if map_match:
        return "map", "map", tag, map_match.group(1), map_match.group(2)
    head = attr.split(",")[0].strip()
    kind = head.split("=")[0].strip()
    label = "repeated" if re.search(r"\brepeated\b", attr) else "optional"
    if kind != "message" and kind not in SCALARS:
        raise ValueError(f"unsupported field kind in #[prost({attr})]")
    return kind, label, tag, None, None


def resolve_type(module: tuple[str, ...], rust_type: str) -> str:
    """Finds the message a field's Rust type names, following `super::` relative paths."""
    # Generic wrappers (Option, Vec, Box, BTreeMap) hold the message as the last path.
    paths = re.findall(r"(?:(?:super|crate|\w+)::)*\w+", rust_type)
    candidates = [
        p
        for p in paths
        if not p.startswith("::")
        and p.split("::")[-1] not in {"Option", "Vec", "Box", "BTreeMap", "HashMap", "String"}
        and not p.startswith(("core::", "prost::", "alloc::"))
    ]
    if not candidates:
        raise ValueError(f"no message type in {rust_type!r}")
    path = candidates[-1].split("::")
    base = list(module)
    if path[0] == "crate":
        base, path = [], path[1:]
    while path and path[0] == "super":
        base.pop()
        path = path[1:]
    return ".".join(["k8s.io", *base, *path])


def parse_pb(root: str) -> tuple[dict[str, PbMessage], list[tuple[str, str, str]]]:
    messages: dict[str, PbMessage] = {}
    resources: list[tuple[str, str, str]] = []
    src = os.path.join(root, "src")
    for path in sorted(glob.glob(os.path.join(src, "**", "mod.rs"), recursive=True)):
        rel = os.path.relpath(os.path.dirname(path), src)
        if rel == ".":
            continue
        module = tuple(rel.split(os.sep))
        package = ".".join(["k8s.io", *module])
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for struct, api_version, kind in RESOURCE_IMPL.findall(text):
            resources.append((api_version, kind, f"{package}.{struct}"))
        lines = text.split("\n")
        i = 0
        while i < len(lines):
            m = STRUCT_OPEN.match(lines[i])
            if not m:
                i += 1
                continue
            msg = PbMessage(package, module, m.group(1))
            messages[msg.full] = msg
            i += 1
            if m.group(2):
                continue
            docs: list[str] = []
            attr: str | None = None
            while i < len(lines) and lines[i] != "}":
                line = lines[i]
                stripped = line.strip()
                if stripped.startswith("///"):
                    docs.append(stripped[3:].strip())
                    i += 1
                    continue
                am = PROST_ATTR.match(line)
                if am:
                    attr = am.group(1)
                    i += 1
                    continue
                fm = FIELD_START.match(line)
                if fm and attr is not None:
                    rust_type = fm.group(2)
                    # rustfmt wraps long types over several lines; a field ends with ",".
                    while i + 1 < len(lines) and not (
                        rust_type.rstrip().endswith(",") and rust_type.count("<") == rust_type.count(">")
                    ):
                        i += 1
                        rust_type += " " + lines[i].strip()
                    kind, label, tag, key, value = parse_prost_attr(attr)
                    pf = PbField(fm.group(1), tag, kind, label, key, value)
                    if kind == "message" or (kind == "map" and value == "message"):
                        pf.type_path = resolve_type(module, rust_type)
                    if docs:
                        first = re.match(r"[A-Za-z0-9_$\-]+", docs[0])
                        pf.doc_first_word = first.group(0) if first else None
                    msg.fields.append(pf)
                    docs, attr = [], None
                else:
                    docs = []
                i += 1
            i += 1
    return messages, resources


# ---------------------------------------------------------------- k8s-openapi


@dataclass
class OaStruct:
    go_name: str
    json_by_rust: dict[str, str]
    rust_fields: list[str]


DESER_KEY = re.compile(r'"([^"]+)" => Field::Key_(\w+),')
PUB_USE = re.compile(r"pub use self::(\w+)::(\w+);")
OA_FIELD = re.compile(r"^    pub (?:r#)?(\w+):", re.M)


def parse_openapi(root: str) -> dict[tuple[tuple[str, ...], str], OaStruct]:
    """Maps (module path, lowercased struct name) to the struct's JSON names."""
    structs: dict[tuple[tuple[str, ...], str], OaStruct] = {}
    base = os.path.join(root, "src", OPENAPI_VERSION_DIR)
    for mod_path in sorted(glob.glob(os.path.join(base, "**", "mod.rs"), recursive=True)):
        rel = os.path.relpath(os.path.dirname(mod_path), base)
        if rel == ".":
            continue
        module = tuple(rel.split(os.sep))
        with open(mod_path, encoding="utf-8") as f:
            uses = PUB_USE.findall(f.read())
        for file_stem, struct in uses:
            file_path = os.path.join(os.path.dirname(mod_path), file_stem + ".rs")
            if not os.path.exists(file_path):
                continue
            with open(file_path, encoding="utf-8") as f:
                text = f.read()
            sm = re.search(r"pub struct " + struct + r" \{(.*?)\n\}", text, re.S)
            rust_fields = OA_FIELD.findall(sm.group(1)) if sm else []
            json_by_rust = {rust: json for json, rust in DESER_KEY.findall(text)}
            structs[(module, struct.lower())] = OaStruct(struct, json_by_rust, rust_fields)
    return structs


# ---------------------------------------------------------------- joining


def lower_camel(snake: str) -> str:
    parts = snake.split("_")
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def go_lower(word: str) -> str:
    """Lowers a Go exported name's leading capitals as Kubernetes JSON tags do
    (UID -> uid, ShareID -> shareID, APIVersion -> apiVersion)."""
    run = len(word) - len(word.lstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    if run == 0:
        return word
    if run == len(word) or run == 1:
        return word[:run].lower() + word[run:]
    return word[: run - 1].lower() + word[run - 1 :]


def inlined_into(inner: PbMessage | None, outer: OaStruct, depth: int = 0) -> bool:
    """Whether the embedded message's fields appear in the outer JSON object directly.

    Embedded structs nest (NamedRuleWithOperations > RuleWithOperations > Rule), and k8s-pb
    may carry fields newer than k8s-openapi's v1_33 module, so most — not all — of the
    fields must be found."""
    if inner is None or not inner.fields or depth > 4:
        return False
    names = {normalize(json) for json in outer.json_by_rust.values()}
    found = 0
    for f in inner.fields:
        if f.rust in outer.json_by_rust or normalize(f.rust) in names:
            found += 1
        elif f.kind == "message" and inlined_into(MESSAGES_BY_NAME.get(f.type_path or ""), outer, depth + 1):
            found += 1
    return found * 4 >= len(inner.fields) * 3


MESSAGES_BY_NAME: dict[str, PbMessage] = {}


@dataclass
class OutField:
    tag: int
    json: str
    kind: str  # Rust expression for the Kind
    shape: str  # Rust expression for the Shape


def special_of(full: str) -> str:
    if full in SPECIAL_BY_NAME:
        return SPECIAL_BY_NAME[full]
    if full.startswith(SPECIAL_SUFFIX_PACKAGE):
        for suffix, special in SPECIAL_BY_SUFFIX.items():
            if full.endswith(suffix):
                return special
    return "None"


def is_string_list(msg: PbMessage) -> bool:
    """Go named slices (Verbs, ExtraValue) travel as a message of one repeated `items`."""
    return (
        len(msg.fields) == 1
        and msg.fields[0].rust == "items"
        and msg.fields[0].kind == "string"
        and msg.fields[0].label == "repeated"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", help="directory holding the unpacked crates")
    parser.add_argument("--out", default=None, help=f"output file (default {OUT_DEFAULT})")
    parser.add_argument("--check", action="store_true", help="fail if the output is stale")
    parser.add_argument("--verbose", action="store_true", help="report fields named by fallback")
    args = parser.parse_args()

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out_path = args.out or os.path.join(repo, OUT_DEFAULT)
    pb_root = find_crate(args.registry, PB_CRATE)
    oa_root = find_crate(args.registry, OPENAPI_CRATE)

    messages, resources = parse_pb(pb_root)
    MESSAGES_BY_NAME.update(messages)
    openapi = parse_openapi(oa_root)

    names = sorted(messages)
    index = {name: i for i, name in enumerate(names)}
    fallbacks: list[str] = []

    def kind_expr(kind: str, type_path: str | None, context: str) -> str:
        if kind == "message":
            if type_path not in index:
                sys.exit(f"{context}: message type {type_path} not found")
            return f"Kind::Message({index[type_path]})"
        return f"Kind::{SCALARS[kind]}"

    # Every JSON spelling k8s-openapi uses, by spelling-insensitive key.
    global_names: dict[str, set[str]] = {}
    for o in openapi.values():
        for json in o.json_by_rust.values():
            global_names.setdefault(normalize(json), set()).add(json)

    out_messages: list[tuple[str, str, list[OutField]]] = []
    for name in names:
        msg = messages[name]
        oa = openapi.get((msg.module, msg.name.lower()))
        by_norm = {normalize(json): json for json in oa.json_by_rust.values()} if oa else {}
        # Versions and lists k8s-openapi lacks borrow names from the same type elsewhere:
        # another version of the group first, then the same type name in any group.
        others = [
            o
            for (module, lowered), o in sorted(openapi.items(), key=lambda kv: (kv[0][0][:-1] != msg.module[:-1], kv[0]))
            if lowered == msg.name.lower() and o is not oa
        ]
        special = "StringList" if is_string_list(msg) else special_of(name)
        fields: list[OutField] = []
        for pf in sorted(msg.fields, key=lambda f: f.tag):
            context = f"{name}.{pf.rust}"
            inline = False
            json = None
            if oa:
                json = oa.json_by_rust.get(pf.rust) or by_norm.get(normalize(pf.rust))
            for other in others:
                if json is not None:
                    break
                json = other.json_by_rust.get(pf.rust) or {normalize(j): j for j in other.json_by_rust.values()}.get(
                    normalize(pf.rust)
                )
            primary = oa or (others[0] if others else None)
            if json is None and primary and pf.kind == "message" and pf.label == "optional":
                # An embedded Go struct inlined in JSON: k8s-openapi has no field for it but
                # carries the embedded message's fields itself.
                if inlined_into(messages.get(pf.type_path or ""), primary):
                    inline = True
                    json = ""
            if json is None:
                spellings = global_names.get(normalize(pf.rust), set())
                if len(spellings) == 1:
                    json = next(iter(spellings))
            if json is None:
                doc = pf.doc_first_word
                if doc and normalize(doc) == normalize(pf.rust):
                    json = go_lower(doc)
                else:
                    json = lower_camel(pf.rust)
                if special == "None":
                    fallbacks.append(f"{context} -> {json}{'' if oa else ' (no k8s-openapi struct)'}")
            if pf.kind == "map":
                kind = kind_expr(pf.map_value or "", pf.type_path, context)
                shape = f"Shape::Map(Kind::{SCALARS[pf.map_key or '']})"
            else:
                kind = kind_expr(pf.kind, pf.type_path, context)
                shape = "Shape::Inline" if inline else ("Shape::Repeated" if pf.label == "repeated" else "Shape::Single")
            fields.append(OutField(pf.tag, json, kind, shape))
        out_messages.append((name, special, fields))

    # Top-level kinds: k8s-pb's Resource impls first, then every message carrying ObjectMeta or
    # ListMeta as field 1 (subresource bodies such as Eviction, Scale and TokenRequest, and the
    # lists), under the apiVersion of its package — known from a Resource impl of that package
    # or, for versions without one, from a sibling version of the same group.
    # prost renames acronyms (APIService -> ApiService) while kinds keep Go's spelling, which
    # k8s-openapi's struct names have; versions it lacks borrow a sibling version's spelling.
    go_names: dict[str, str] = {}
    for (_, lowered), oa in sorted(openapi.items()):
        go_names.setdefault(lowered, oa.go_name)

    def go_spelling(msg: PbMessage) -> str:
        oa = openapi.get((msg.module, msg.name.lower()))
        return oa.go_name if oa else go_names.get(msg.name.lower(), msg.name)

    kinds: dict[tuple[str, str], str] = {}
    package_version: dict[str, str] = {}
    group_of_dir: dict[tuple[str, ...], str] = {}
    for api_version, kind, full in sorted(resources):
        kinds[(api_version, kind)] = full
        package = full.rsplit(".", 1)[0]
        package_version[package] = api_version
        group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
        group_of_dir[messages[full].module[:-1]] = group
    meta_types = {
        "k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "k8s.io.apimachinery.pkg.apis.meta.v1.ListMeta",
    }
    for name in names:
        msg = messages[name]
        first = next((f for f in msg.fields if f.tag == 1), None)
        if not first or first.type_path not in meta_types or first.rust != "metadata":
            continue
        api_version = package_version.get(msg.package)
        if api_version is None and msg.module[:-1] in group_of_dir:
            group = group_of_dir[msg.module[:-1]]
            api_version = f"{group}/{msg.module[-1]}" if group else msg.module[-1]
        if api_version is not None:
            kinds.setdefault((api_version, go_spelling(msg)), name)
    any_version = sorted(
        (messages[n].name, n)
        for n in names
        if messages[n].package == "k8s.io.apimachinery.pkg.apis.meta.v1" and n.endswith(ANY_VERSION_META_SUFFIX)
    )

    lines: list[str] = []
    w = lines.append
    w("// @generated by scripts/gen-protobuf-schema.py; do not edit.")
    w(f"// Derived from the {PB_CRATE} and {OPENAPI_CRATE} ({OPENAPI_VERSION_DIR}) crates.")
    w("// Regenerate: python3 scripts/gen-protobuf-schema.py (needs rustfmt on PATH).")
    w("")
    w("//! The protobuf wire schema of every built-in Kubernetes message, with JSON field names.")
    w("")
    w("use super::{Field, Kind, Message, Shape, Special};")
    w("")
    w("/// Every message, sorted by full name; [`Kind::Message`] holds an index into this table.")
    w("pub(crate) static MESSAGES: &[Message] = &[")
    for i, (name, special, fields) in enumerate(out_messages):
        w(f"    // {i}")
        w("    Message {")
        w(f'        name: "{name}",')
        w(f"        special: Special::{special},")
        if fields:
            w("        fields: &[")
            for f in fields:
                w(f'            Field {{ tag: {f.tag}, json: "{f.json}", kind: {f.kind}, shape: {f.shape} }},')
            w("        ],")
        else:
            w("        fields: &[],")
        w("    },")
    w("];")
    w("")
    w("/// (apiVersion, kind) of top-level objects to their message, sorted for binary search.")
    w("pub(crate) static KINDS: &[(&str, &str, usize)] = &[")
    for (api_version, kind), full in sorted(kinds.items()):
        w(f'    ("{api_version}", "{kind}", {index[full]}),')
    w("];")
    w("")
    w("/// meta/v1 kinds accepted under any apiVersion, sorted by kind.")
    w("pub(crate) static ANY_VERSION_KINDS: &[(&str, usize)] = &[")
    for kind, full in any_version:
        w(f'    ("{kind}", {index[full]}),')
    w("];")
    w("")
    output = rustfmt("\n".join(lines))

    if args.verbose:
        for line in fallbacks:
            print(f"fallback: {line}", file=sys.stderr)
    print(
        f"{len(out_messages)} messages, {len(kinds)} kinds, {len(fallbacks)} JSON names by fallback",
        file=sys.stderr,
    )
    if args.check:
        try:
            with open(out_path, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = ""
        if current != output:
            sys.exit(f"{out_path} is stale; rerun scripts/gen-protobuf-schema.py")
        return
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(output)


def rustfmt(text: str) -> str:
    """Formats the output as the repository does, so the committed file is rustfmt-clean and
    --check compares exactly."""
    try:
        done = subprocess.run(
            ["rustfmt", "--edition", "2024", "--emit", "stdout"],
            input=text,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"rustfmt failed: {e}")
    return done.stdout


if __name__ == "__main__":
    main()
