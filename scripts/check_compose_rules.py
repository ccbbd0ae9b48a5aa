"""usermeta's own rules for docker-compose.yml, the Dockerfile and .dockerignore: what the compose schema cannot
say. Run by scripts/check-compose.sh (which provides ruamel.yaml through check-jsonschema's venv).

Usage: check_compose_rules.py docker-compose.yml Dockerfile .dockerignore
Prints one line per rule; exits 1 when any rule is broken.
"""

import json
import posixpath
import re
import sys
from urllib.parse import urlsplit

from ruamel.yaml import YAML

failures: list[str] = []


def rule(ok: bool, text: str) -> None:
    print(f"   {'ok  ' if ok else 'FAIL'} {text}")
    if not ok:
        failures.append(text)


def env_of(service: dict) -> dict:
    """A service's environment as a dict, from either the map or the list form."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def mounts_of(service: dict) -> list[tuple[str, str]]:
    """(source, target) of a service's volumes, short or long syntax."""
    result = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            parts = volume.split(":")
            if len(parts) >= 2:
                result.append((parts[0], parts[1]))
        else:
            result.append((volume.get("source", ""), volume.get("target", "")))
    return result


def volume_holding(service: dict, path: str) -> tuple[str, str] | None:
    """The named volume and in-volume path where `path` lives in `service`, if it is on a volume."""
    best = None
    for source, target in mounts_of(service):
        if path == target or path.startswith(target.rstrip("/") + "/"):
            if best is None or len(target) > len(best[1]):
                best = (source, target)
    if best is None:
        return None
    return best[0], posixpath.relpath(path, best[1])


def published_container_ports(service: dict) -> set[int]:
    ports = set()
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            ports.add(int(port["target"]))
        else:
            ports.add(int(str(port).rsplit(":", 1)[-1].split("/")[0]))
    return ports


def check_compose(path: str) -> None:
    with open(path) as f:
        compose = YAML(typ="safe").load(f)
    services = compose.get("services") or {}
    rule({"db", "zitadel", "usermeta"} <= services.keys(), "services db, zitadel and usermeta exist")
    if failures:
        return
    db, zitadel, usermeta = services["db"], services["zitadel"], services["usermeta"]
    z_env, u_env = env_of(zitadel), env_of(usermeta)

    # Start order: every health-gated dependency names a service that has a health check.
    for name, service in services.items():
        for dep, spec in (service.get("depends_on") or {}).items() if isinstance(service.get("depends_on"), dict) else []:
            if spec.get("condition") == "service_healthy":
                rule("healthcheck" in services.get(dep, {}), f"{name} waits for {dep}'s health check, which exists")
    rule(
        (zitadel.get("depends_on") or {}).get("db", {}).get("condition") == "service_healthy",
        "zitadel starts after PostgreSQL is healthy",
    )
    rule(
        (usermeta.get("depends_on") or {}).get("zitadel", {}).get("condition") == "service_healthy",
        "usermeta starts after ZITADEL is healthy (ready, so the PAT file exists)",
    )
    rule(
        zitadel.get("healthcheck", {}).get("test") == ["CMD", "/app/zitadel", "ready"],
        "zitadel's health check is `/app/zitadel ready`",
    )
    rule(
        usermeta.get("healthcheck", {}).get("test") == ["CMD", "/usermeta", "healthcheck"],
        "usermeta's health check is `/usermeta healthcheck`",
    )
    rule(usermeta.get("restart") in ("on-failure", "unless-stopped", "always"), "usermeta restarts after a failed start")
    rule(str(usermeta.get("build")) in (".", "./") or (usermeta.get("build") or {}).get("context") in (".", "./"),
         "usermeta is built from this repository")
    command = usermeta.get("command")
    rule(command in ("serve", ["serve"]), "usermeta runs `serve`")
    rule("start-from-init" in str(zitadel.get("command")), "zitadel runs start-from-init")
    rule(str(z_env.get("ZITADEL_EXTERNALSECURE")).lower() == "false", "ZITADEL serves plain HTTP (EXTERNALSECURE false)")
    rule("healthcheck" in db, "PostgreSQL has a health check")

    # The PAT: written by ZITADEL's setup, read by usermeta, through one named volume at the same relative path.
    pat_written = z_env.get("ZITADEL_FIRSTINSTANCE_PATPATH")
    pat_read = u_env.get("USERMETA_SERVICE_PAT_FILE")
    rule(bool(pat_written) and bool(pat_read), "ZITADEL writes a PAT file and usermeta reads one")
    if pat_written and pat_read:
        written, read = volume_holding(zitadel, pat_written), volume_holding(usermeta, pat_read)
        named_volumes = (compose.get("volumes") or {}).keys()
        rule(
            written is not None and read is not None and written == read and written[0] in named_volumes,
            f"the PAT ZITADEL writes ({pat_written}) is the file usermeta reads ({pat_read}), on one named volume",
        )
        read_only = any(
            target == posixpath.dirname(pat_read) and spec.endswith(":ro")
            for spec in (v for v in usermeta.get("volumes") or [] if isinstance(v, str))
            for target in [spec.split(":")[1]]
        )
        rule(read_only, "usermeta mounts the PAT volume read-only")
    for key in ("USERNAME", "NAME"):
        rule(bool(z_env.get(f"ZITADEL_FIRSTINSTANCE_ORG_MACHINE_MACHINE_{key}")),
             f"the first instance's owner is a machine user (MACHINE_{key} set), so a PAT is written")
    rule(bool(z_env.get("ZITADEL_FIRSTINSTANCE_ORG_MACHINE_PAT_EXPIRATIONDATE")), "the admin PAT has an expiration date")

    # ZITADEL finds its instance by Host: usermeta must call it by ZITADEL_EXTERNALDOMAIN.
    url = urlsplit(u_env.get("USERMETA_ZITADEL_URL") or "")
    domain = z_env.get("ZITADEL_EXTERNALDOMAIN")
    external_port = int(z_env.get("ZITADEL_EXTERNALPORT") or 8080)
    rule(url.hostname == domain and (url.port or 80) == external_port,
         f"usermeta calls ZITADEL as {url.hostname}:{url.port}, which is ZITADEL_EXTERNALDOMAIN:EXTERNALPORT "
         f"({domain}:{external_port}), so the Host header finds the instance")
    if url.hostname in ("localhost", "127.0.0.1"):
        rule(usermeta.get("network_mode") == "service:zitadel",
             "usermeta's localhost is the zitadel container (network_mode: service:zitadel)")

    # Ports: ZITADEL's 8080 and usermeta's 50051 reach the host.
    usermeta_ports_on = zitadel if usermeta.get("network_mode") == "service:zitadel" else usermeta
    rule(8080 in published_container_ports(zitadel), "ZITADEL's port 8080 is published")
    rule(50051 in published_container_ports(usermeta_ports_on), "usermeta's port 50051 is published")
    if usermeta.get("network_mode", "").startswith("service:"):
        rule(not usermeta.get("ports"), "usermeta publishes no ports itself (its network namespace is zitadel's)")
    listen = u_env.get("USERMETA_LISTEN", "0.0.0.0:50051")
    rule(listen.startswith("0.0.0.0:") and listen.endswith(":50051"), f"usermeta listens on every interface, port 50051 ({listen})")


def dockerfile_instructions(path: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", open(path).read())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            instructions = []  # only the last stage makes the image
        instructions.append((word.upper(), rest.strip()))
    return instructions


def check_dockerfile(path: str) -> None:
    final = dockerfile_instructions(path)
    first = dict(final[:1])
    rule(bool(first.get("FROM")), "the Dockerfile's final stage has a FROM")
    users = [args for word, args in final if word == "USER"]
    user = users[-1].split(":")[0] if users else ""
    rule(bool(user) and user not in ("0", "root"), f"the image runs as a non-root user ({user or 'none set'})")
    copies = [args for word, args in final if word in ("COPY", "ADD")]
    rule(copies == ["--from=builder /usermeta /usermeta"], f"the runtime stage copies only the binary ({copies})")
    rule(any(word == "EXPOSE" and "50051" in args.split() for word, args in final), "the image exposes 50051")

    def exec_form(word: str) -> list | None:
        for w, args in final:
            if w == word:
                try:
                    return json.loads(args.split("CMD", 1)[1] if word == "HEALTHCHECK" else args)
                except (ValueError, IndexError):
                    return None
        return None

    rule(exec_form("HEALTHCHECK") == ["/usermeta", "healthcheck"], "HEALTHCHECK runs `/usermeta healthcheck` (exec form)")
    rule(exec_form("ENTRYPOINT") == ["/usermeta"], "ENTRYPOINT is /usermeta (exec form)")
    rule(exec_form("CMD") == ["serve"], "CMD is serve")


def check_dockerignore(path: str) -> None:
    lines = [l.strip() for l in open(path) if l.strip() and not l.lstrip().startswith("#")]
    allowlist = bool(lines) and lines[0] == "*"
    rule(allowlist or all(p in lines for p in ("target", ".git", "**/node_modules")),
         ".dockerignore keeps target/, .git and node_modules out of the build context")
    if allowlist:
        allowed = {l[1:].rstrip("/") for l in lines if l.startswith("!")}
        needed = {"Cargo.toml", "Cargo.lock", "build.rs", "proto", "src", "crates"}
        rule(needed <= allowed, f".dockerignore lets in what the Dockerfile copies ({sorted(needed)})")


def main() -> int:
    compose, dockerfile, dockerignore = sys.argv[1:4]
    check_compose(compose)
    check_dockerfile(dockerfile)
    check_dockerignore(dockerignore)
    if failures:
        print(f"{len(failures)} rule(s) broken")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
