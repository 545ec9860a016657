"""The wheel in someone else's Django project, set up as the README's "Add CoreMQ to your Django project" says."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import urllib.request
import zipfile
from pathlib import Path

import pytest

from installed_env import PACKAGES, ROOT, TEST_PACKAGES, Output, clean_env, run

pytestmark = pytest.mark.timeout(600)

WAIT = 30_000  # ms: how long the page may take to show something (a wait, not a measurement)

# A page of the new project that shows the titles published to "news"; the test adds it beside the README's view.
PAGE_VIEW = '''
from django.http import HttpResponse
from django.templatetags.static import static

PAGE = """<!doctype html><html><head><title>news</title><script src="%s"></script></head><body>
<ol id="news"></ol>
<script>
  const mq = new CoreMQ("/ws/coremq/");
  mq.subscribe("news", (message) => {
    const item = document.createElement("li");
    item.textContent = message.title;
    document.getElementById("news").append(item);
  }).then(() => { document.body.dataset.subscribed = "yes"; });
</script></body></html>"""


def page(request):
    return HttpResponse(PAGE % static("coremq/coremq.js"))
'''


def readme_blocks() -> dict[str, str]:
    """The README's Python blocks of "Add CoreMQ to your Django project", by the file named on their first line."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Add CoreMQ to your Django project", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n# (mysite/\S+)[^\n]*\n(.*?)```", section, re.S)
    return {name: code for name, code in blocks}


def stop(process: subprocess.Popen[str]) -> int:
    """SIGTERM, then SIGKILL if the process has not ended within 30 s; its exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def test_wheel_holds_both_packages_with_templates_static_files_and_migrations(wheel: Path) -> None:
    """The wheel has coremq_broker (templates, static files, migrations, run_coremq), coremq_client and `coremq`."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    tree = {path.relative_to(ROOT).as_posix() for package in PACKAGES for path in (ROOT / package).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"}
    assert {"coremq_broker/templates/coremq/status.html", "coremq_broker/static/coremq/coremq.js",
            "coremq_broker/migrations/0001_queuesetting.py", "coremq_broker/management/commands/run_coremq.py",
            "coremq_client/cli.py"} <= tree
    assert tree - names == set()  # every module, template, static file and migration
    assert not [n for n in names if n.startswith(("tests/", "bench/", "coremq_project/")) or "__pycache__" in n]
    assert "coremq = coremq_client.cli:main" in entry_points
    runtime = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert runtime and not {line.split()[1].split("<")[0].split(">")[0].lower() for line in runtime} & TEST_PACKAGES
    for extra in ("fast", "redis", "dev"):
        assert f"Provides-Extra: {extra}" in metadata


def test_new_project_publishes_from_a_view_to_a_browser(venv: Path, tmp_path: Path, chromium) -> None:
    """startproject, the README's settings, asgi.py and view; under run_coremq a view's message reaches Chromium."""
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    installed = json.loads(run([python, "-m", "pip", "list", "--format", "json"], cwd=tmp_path).stdout)
    assert not {package["name"].lower() for package in installed} & TEST_PACKAGES
    where = run([python, "-c", "import coremq_broker, coremq_client; print(coremq_broker.__file__)"], cwd=tmp_path)
    assert where.stdout.startswith(str(venv)), where.stdout  # the installed copy, not this repository

    run([bin_dir / "django-admin", "startproject", "mysite"], cwd=tmp_path)
    project = tmp_path / "mysite"
    blocks = readme_blocks()
    assert set(blocks) == {"mysite/settings.py", "mysite/asgi.py", "mysite/views.py"}
    with open(project / "mysite" / "settings.py", "a") as settings:
        settings.write("\n" + blocks["mysite/settings.py"])
    (project / "mysite" / "asgi.py").write_text(blocks["mysite/asgi.py"])
    (project / "mysite" / "views.py").write_text(blocks["mysite/views.py"])
    (project / "mysite" / "news_page.py").write_text(PAGE_VIEW)
    with open(project / "mysite" / "urls.py", "a") as urls:
        urls.write("\nfrom . import news_page, views  # noqa: E402\n\n"
                   "urlpatterns += [path('notify/', views.notify), path('page/', news_page.page)]\n")

    run([python, "manage.py", "check", "--fail-level", "WARNING"], cwd=project)
    run([python, "manage.py", "migrate", "--noinput"], cwd=project)
    assert "[X] 0001_queuesetting" in run([python, "manage.py", "showmigrations", "coremq_broker"], cwd=project).stdout

    server = subprocess.Popen(
        [str(python), "manage.py", "run_coremq", "--port", "0", "--web-port", "0"], cwd=project, env=clean_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        output = Output(server)
        port = int(output.wait_for("CoreMQ broker listening on").split()[4].rsplit(":", 1)[1])
        web = output.wait_for("CoreMQ web app on").split()[-1].rstrip("/")

        context = chromium.new_context()
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{web}/page/")
        page.wait_for_selector("body[data-subscribed=yes]", state="attached", timeout=WAIT)

        with urllib.request.urlopen(f"{web}/notify/?title=from+a+view", timeout=30) as response:
            reply = json.loads(response.read())
        assert reply["response"] == "OK: Message sent" and reply["id"] == 1
        page.wait_for_selector("#news li:has-text('from a view')", timeout=WAIT)

        # The installed `coremq` command, with its options after the command, reaches the same page over TCP.
        published = run([bin_dir / "coremq", "pub", "--port", port, "news", '{"title": "from the command"}'],
                        cwd=tmp_path)
        assert json.loads(published.stdout)["id"] == 2
        page.wait_for_selector("#news li:has-text('from the command')", timeout=WAIT)
        assert page.locator("#news li").all_text_contents() == ["from a view", "from the command"]
        assert errors == []
        context.close()
    finally:
        code = stop(server)
    assert code == 0, "".join(output.seen)
