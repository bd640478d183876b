"""The three descriptions of the command line agree (issue 11): `--help`
(src/help.c), the manual page (man/ckptfs.1) and README.md name the same
commands, and for each command the same options. The manual page is clean
for mandoc -Tlint at the warning level."""

import os
import re
import shutil
import subprocess

import pytest

from conftest import CKPTFS, SRCDIR, need_binary, run_cli

MAN = os.path.join(SRCDIR, "man", "ckptfs.1")
README = os.path.join(SRCDIR, "README.md")

# Option names: -x, --long, and NAME= sub-options of -o; strip=/add= are the
# syntax of a view, not options.
_OPT = re.compile(r"(?<![\w=-])(--?[A-Za-z][\w-]*)|(?<![\w-])([a-z_]+=)")


def option_names(text):
    names = set()
    for short, sub in _OPT.findall(text):
        name = short or sub
        if name not in ("strip=", "add="):
            names.add(name)
    return names


# --------------------------------------------------------------------------
# --help

def help_text(cmd=None):
    rc, out, err = run_cli(["help"] + ([cmd] if cmd else []))
    assert rc == 0, err
    return out


def help_block(text, title):
    lines = text.split("\n")
    start = lines.index(title) + 1
    block = []
    for line in lines[start:]:
        if not line.strip():
            break
        block.append(line)
    return block


def help_commands():
    return {ln.split()[0] for ln in help_block(help_text(), "Commands:") if re.match(r"  [a-z]", ln)}


def help_options(cmd):
    """The option column of the Options: block (description after 2 blanks)."""
    heads = [re.split(r"\s{2,}", ln.strip())[0] for ln in help_block(help_text(cmd), "Options:")
             if re.match(r"  -", ln)]
    return option_names(" ".join(heads))


# --------------------------------------------------------------------------
# man page: .SS per command under COMMANDS, options are .TP tags

def _roff_text(line):
    line = re.sub(r"\\f[BIRP]", "", line).replace("\\-", "-").replace("\\&", "")
    return re.sub(r'^\.(B|I|BI|BR|IB|RB|IR|RI)\s+', "", line).replace('"', "")


def man_sections():
    """{section or command: [tag lines]}: .TP tags of each .SS in COMMANDS
    and of .SH OPTIONS (key None)."""
    with open(MAN) as f:
        lines = f.read().split("\n")
    out, current, sh = {}, None, None
    for i, line in enumerate(lines):
        if line.startswith(".SH "):
            sh = line[4:].strip()
            current = None if sh == "OPTIONS" else False
            if sh == "OPTIONS":
                out[None] = []
        elif line.startswith(".SS ") and sh == "COMMANDS":
            current = line[4:].strip()
            out[current] = []
        elif line == ".TP" and current is not False and i + 1 < len(lines):
            out[current].append(_roff_text(lines[i + 1]))
    return out


# --------------------------------------------------------------------------
# README: "### `ckptfs CMD`" sections, option tables' first column

def readme_sections():
    with open(README) as f:
        text = f.read()
    out = {}
    for m in re.finditer(r"^### ([^\n]*)\n(.*?)(?=^##)", text, re.M | re.S):
        cmds = re.findall(r"`ckptfs (\w+)`", m.group(1))
        for cmd in cmds:
            opts = set()
            for row in re.findall(r"^\| `([^|]*)\| ([^|]*)\|", m.group(2), re.M):
                only = re.match(r"\((\w+)\)", row[1].strip())
                if not only or only.group(1) == cmd:
                    opts |= option_names(row[0].replace("`", ""))
            out[cmd] = opts
    rows = re.search(r"^\| Option \(no command\) \|.*?\n\n", text, re.M | re.S).group(0)
    out[None] = option_names(" ".join(r.split("|")[1] for r in rows.splitlines()[2:] if r))
    return out


def test_commands_agree():
    need_binary()
    man = set(man_sections()) - {None}
    readme = set(readme_sections()) - {None}
    assert help_commands() == man == readme, (help_commands(), man, readme)
    assert help_commands() >= {"mount", "umount", "restart", "inspect", "convert", "cat", "help"}


@pytest.mark.parametrize("cmd", ["mount", "umount", "restart", "inspect", "convert", "cat", "help",
                                 None])
def test_options_agree(cmd):
    need_binary()
    if cmd is None:
        got = option_names(" ".join(re.split(r"\s{2,}", ln.strip())[0]
                                    for ln in help_block(help_text(), "Options:")))
    else:
        got = help_options(cmd)
    man = option_names(" ".join(man_sections()[cmd]))
    readme = readme_sections()[cmd]
    assert got == man == readme, "help %s, man %s, README %s" % (sorted(got), sorted(man), sorted(readme))
    assert "--help" in got


@pytest.mark.parametrize("cmd", ["mount", "umount", "restart", "inspect", "convert", "cat", "help"])
def test_command_help_forms(cmd):
    """ckptfs CMD --help == ckptfs help CMD, exit 0, on stdout."""
    need_binary()
    rc, out, err = run_cli([cmd, "--help"])
    assert rc == 0 and not err, err
    assert out == help_text(cmd) and out.startswith("Usage: ckptfs %s" % cmd)


def test_overview_forms():
    need_binary()
    rc, out, _ = run_cli(["--help"])
    assert rc == 0 and out == help_text()
    rc, _, err = run_cli(["help", "nosuch"])
    assert rc == 2 and "nosuch" in err


def test_man_page_lints_clean():
    if not shutil.which("mandoc"):
        pytest.skip("mandoc not installed (setup.sh installs it)")
    # every level, style notes (such as lines over 80 bytes) included
    r = subprocess.run(["mandoc", "-Tlint", MAN], capture_output=True, text=True)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
