"""--root confines the migration to the old server's tree (security review): paths of the old
configuration that lead out of it through ".." or a symbolic link are never read or copied,
copied tables are not world-readable, and tables are read with the size limit."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from tests.migrate.conftest import SEEDS, Seed

from mailkeep.migrate import apply as apply_module
from mailkeep.migrate.apply import ApplyOptions, apply, prepare
from mailkeep.migrate.plan import build_plan
from mailkeep.migrate.sources import MAX_SOURCE_FILE_BYTES, MigrateError, OutsideRoot, SourceTree

SECRET = "secret-recipient@elsewhere.test REJECT\n"
MAIN_CF = "usr/local/etc/postfix/main.cf"


def hostile_copy(tmp_path: Path) -> tuple[Seed, Path]:
    """seed000 below tmp_path/old, its main.cf naming a table through "/../.." and one
    through a symbolic link, both leading to tmp_path/host/secret (a file of this host)."""
    seed = SEEDS["seed000"]
    base = tmp_path / "old"
    shutil.copytree(seed.root(), seed.root(base))
    host = tmp_path / "host"
    host.mkdir()
    (host / "secret").write_text(SECRET)
    (host / "linked").write_text(SECRET)
    root = seed.root(base)
    (root / "usr/local/etc/postfix/access").symlink_to(host / "linked")
    main_cf = root / MAIN_CF
    escape = "/.." * 40 + str(host / "secret")
    main_cf.write_text(main_cf.read_text().replace(
        "check_sender_access pcre:/usr/local/etc/postfix/sender_access.pcre,",
        "check_sender_access pcre:/usr/local/etc/postfix/sender_access.pcre,\n"
        f"    check_sender_access texthash:{escape},\n"
        "    check_client_access texthash:/usr/local/etc/postfix/access,"))
    return seed, base


def test_tables_outside_the_root_are_reported_and_never_copied(tmp_path: Path) -> None:
    seed, base = hostile_copy(tmp_path)
    plan = build_plan(seed.sources(base))
    target = tmp_path / "new"
    options = ApplyOptions(config_path=target / "mailkeep.toml", data_dir=target / "data",
                           progress=False)
    apply(plan, prepare(plan, options), options, say=lambda text: None)

    assert not any(source.is_relative_to(tmp_path / "host") for source in plan.policy_tables)
    assert {"secret", "linked", "access"}.isdisjoint(plan.policy_tables.values())
    tables = target / "postfix-tables"
    assert tables.is_dir()
    for copy in tables.iterdir():
        assert copy.read_text() != SECRET, copy
        # Copied tables are not readable by others (0640), whatever the original's mode.
        assert stat.S_IMODE(copy.stat().st_mode) & 0o007 == 0, copy

    # "/../..": "/" on the old host, so the old server's own file below the root, which
    # is not there; the link: outside the root, refused.
    reasons = {u.item.rsplit(":", 1)[-1]: u.reason for u in plan.unmapped}
    dotdot = "/.." * 40 + str(tmp_path / "host" / "secret")
    assert "No such file" in reasons[dotdot]
    assert str(seed.root(base) / "tmp") in reasons[dotdot]
    assert "leads outside --root" in reasons["/usr/local/etc/postfix/access"]


def test_source_tree_paths_stay_below_the_root(tmp_path: Path) -> None:
    root = tmp_path / "old"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "shadow").write_text("the old server's\n")
    (root / "etc" / "link").symlink_to("/etc/passwd")
    (root / "etc" / "inside").symlink_to("shadow")
    tree = SourceTree(root)
    # "/.." is "/" on the old host: the old server's own /etc/shadow, below the root.
    assert tree.path("/../../../etc/shadow") == (root / "etc" / "shadow").resolve()
    assert tree.path("/etc/inside") == (root / "etc" / "shadow").resolve()
    with pytest.raises(OutsideRoot, match="leads outside --root"):
        tree.path("/etc/link")
    with pytest.raises(OutsideRoot):
        tree.path("../../../../../../etc/passwd", relative_to=root / "etc")
    # Without --root (migrating on the old host itself) the paths are the host's own.
    assert SourceTree().path("/etc/postfix/../shadow") == Path("/etc/postfix/../shadow")


def test_apply_reads_a_table_with_the_size_limit(tmp_path: Path, monkeypatch) -> None:
    seed = SEEDS["seed000"]
    shutil.copytree(seed.root(), seed.root(tmp_path / "old"))
    plan = build_plan(seed.sources(tmp_path / "old"))
    table = next(source for source in plan.policy_tables if source.name == "header_checks.pcre")
    validate = apply_module._validate

    def validate_then_grow(text: str, path: Path):  # type: ignore[no-untyped-def]
        config = validate(text, path)  # the server's loader read the table (its own limit)
        os.truncate(table, MAX_SOURCE_FILE_BYTES + 1)  # then it grows (sparse), to be copied
        return config

    monkeypatch.setattr(apply_module, "_validate", validate_then_grow)
    options = ApplyOptions(config_path=tmp_path / "new" / "mailkeep.toml",
                           data_dir=tmp_path / "new" / "data", progress=False)
    with pytest.raises(MigrateError, match="larger than"):
        prepare(plan, options)
