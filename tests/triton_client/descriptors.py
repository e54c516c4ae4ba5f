"""Protobuf descriptors as plain data, to compare two builds of the same .proto (needs only protobuf)."""


def _repeated(f) -> bool:
    return f.is_repeated if hasattr(f, "is_repeated") else f.label == f.LABEL_REPEATED  # protobuf 7 dropped label


def _field(f) -> list:
    kind = f.message_type or f.enum_type
    return [f.number, f.type, _repeated(f), kind.full_name if kind else "",
            f.containing_oneof.name if f.containing_oneof else ""]


def describe(files) -> dict:
    """{message: {field: [number, type, repeated, type name, oneof]}, enum: {value: number}, service: {rpc: [...]}}."""
    out = {}

    def walk(desc):
        out[desc.full_name] = {f.name: _field(f) for f in desc.fields}
        for e in desc.enum_types:
            out[e.full_name] = {v.name: v.number for v in e.values}
        for nested in desc.nested_types:
            walk(nested)

    for fd in files:
        for msg in fd.message_types_by_name.values():
            walk(msg)
        for e in fd.enum_types_by_name.values():
            out[e.full_name] = {v.name: v.number for v in e.values}
        for svc in fd.services_by_name.values():
            out[svc.full_name] = {m.name: [m.input_type.full_name, m.output_type.full_name, m.client_streaming,
                                           m.server_streaming] for m in svc.methods}
    return out
