"""The documentation: the MkDocs site builds in strict mode, the README
stays a short front page with the commands CI runs and a link to every
page, and nothing links outside the repository.

mkdocs.yml turns every link, anchor and nav check into a warning, and
strict mode makes a warning fail the build, so a broken link or a page
left out of the nav fails here."""

import re
import subprocess
import sys
from pathlib import Path

import yaml  # a dependency of mkdocs (the `docs` extra)

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 250


def nav_pages() -> list:
    """Every page that mkdocs.yml's nav lists, as paths under docs/."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    pages = []

    def walk(node):
        if isinstance(node, str):
            pages.append(node)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)

    walk(config["nav"])
    return pages


def ci_test_command() -> str:
    """The last command line of .ci/run: the install-and-test command."""
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    return commands[-1]


def strip_code(markdown: str) -> str:
    """The text without fenced code blocks and inline code spans."""
    markdown = re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", markdown)


def external_urls(markdown: str) -> list:
    """URLs outside code that point to another site (localhost is ours)."""
    urls = re.findall(r"https?://[^\s)>\]]+", strip_code(markdown))
    return [
        url
        for url in urls
        if not re.match(r"https?://(localhost|127\.0\.0\.1|\[::1\])([:/]|$)", url)
    ]


def test_the_site_builds_in_strict_mode_without_a_warning(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Strict mode already fails on warnings; say which, should a version
    # of mkdocs print one and still succeed.
    assert not re.search(r"^(WARNING|ERROR)\b", output, flags=re.M), output
    for page in nav_pages():
        built = (
            tmp_path
            / "site"
            / (page[: -len(".md")] + "/index.html" if page != "index.md" else "index.html")
        )
        assert built.is_file(), f"{page} was not built"


def test_every_page_in_docs_is_in_the_nav():
    # mkdocs.yml makes this a warning too; this says which page, and holds
    # whatever the validation settings become.
    listed = set(nav_pages())
    pages = {str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md")}
    assert pages - listed == set(), "pages missing from mkdocs.yml's nav"


def test_the_readme_is_a_short_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


def test_the_readme_shows_the_exact_command_ci_runs():
    command = ci_test_command()
    assert "pytest" in command, f"the last command of .ci/run is not the test command: {command}"
    readme = README.read_text(encoding="utf-8")
    blocks = re.findall(r"^```sh\n(.*?)^```", readme, flags=re.M | re.S)
    assert any(command in block.splitlines() for block in blocks), (
        f"README.md has no code block with .ci/run's command: {command}"
    )


def test_the_readme_links_to_every_page():
    readme = README.read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\(docs/([^)#\s]+\.md)(?:#[^)]*)?\)", readme))
    missing = [page for page in nav_pages() if page not in linked]
    assert missing == [], f"README.md does not link to: {missing}"


def test_the_readme_and_the_pages_link_nowhere_outside_the_repository():
    for path in [README, *sorted(DOCS.rglob("*.md"))]:
        urls = external_urls(path.read_text(encoding="utf-8"))
        assert urls == [], f"{path.relative_to(ROOT)} links outside the repository: {urls}"


def test_the_link_check_sees_external_links():
    # The check above must be able to fail.
    assert external_urls("see [gevent](https://www.gevent.org/)") == ["https://www.gevent.org/"]
    assert external_urls("<http://example.org/x>") == ["http://example.org/x"]
    assert external_urls("open http://localhost:8080/ or `https://a.example`") == []
    assert external_urls("```\ncurl https://example.org\n```\n") == []


def test_the_haproxy_configuration_shown_is_the_one_tested():
    """docs/deploying.md's haproxy.cfg is the one tests/test_e2e_haproxy.py
    runs HAProxy with, with its documented ports: the text users copy is
    the one tested."""
    from test_e2e_haproxy import HAPROXY_CFG

    page = (DOCS / "deploying.md").read_text(encoding="utf-8")
    section = page[page.index("## HAProxy in front") :]
    block = section.split("```\n", 2)[1]
    assert block == HAPROXY_CFG.format(v1=7000, v2=7001, gchat=8000, check="")
