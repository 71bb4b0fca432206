"""Write .dvc/plots.html: `dvc plots show`'s page with vega, vega-lite and vega-embed inlined.

DVC's own page loads the three libraries from cdn.jsdelivr.net, so offline (a device lab, an air-gapped
machine, a train) `dvc plots show` renders a blank page. The template leaves out DVC's ``{scripts}``
placeholder (the CDN tags) and carries minified copies of the versions DVC's page names; .dvc/config
points `plots.html_template` at it.

Usage (from the repository root; the tarballs are what `npm pack` fetches from the npm registry):

    npm pack vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2
    python scripts/offline_plots_page.py vega-5.20.2.tgz vega-lite-5.2.0.tgz vega-embed-6.18.2.tgz
"""

from __future__ import annotations

import re
import sys
import tarfile
from pathlib import Path

OUT = Path(".dvc/plots.html")
# Load order matters: vega-embed's UMD build reads the vega and vegaLite globals.
BUILDS = {"vega": "package/build/vega.min.js", "vega-lite": "package/build/vega-lite.min.js",
          "vega-embed": "package/build/vega-embed.min.js"}

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- Written by scripts/offline_plots_page.py: {versions}, inlined so the page needs no network.
         vega, vega-lite and vega-embed: BSD-3-Clause, University of Washington Interactive Data Lab. -->
{libraries}
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def library(tgz: Path, name: str) -> tuple[str, str]:
    """(``name@version``, the minified build as one inline script) from an npm tarball."""
    with tarfile.open(tgz) as tar:
        package = tar.extractfile("package/package.json")
        build = tar.extractfile(BUILDS[name])
        if package is None or build is None:
            raise SystemExit(f"{tgz}: no {BUILDS[name]}; pass the tarball `npm pack {name}@<version>` wrote")
        version = re.search(r'"version":\s*"([^"]+)"', package.read().decode()).group(1)  # type: ignore[union-attr]
        code = build.read().decode("utf-8")
    code = re.sub(r"\n?//# sourceMappingURL=\S+\s*$", "", code)  # the .map is not shipped
    # A literal "</script" would end the inline element early; DVC fills {placeholders} by plain replace.
    if "</script" in code.lower() or re.search(r"\{(plot_divs|scripts|refresh_tag)\}", code):
        raise SystemExit(f"{tgz}: {BUILDS[name]} cannot be inlined as is")
    return f"{name}@{version}", f'    <script type="text/javascript">\n{code}\n    </script>'


def main(tarballs: list[str]) -> None:
    by_name = {n: Path(t) for t in tarballs for n in BUILDS if Path(t).name.startswith(f"{n}-") and
               Path(t).name[len(n) + 1:len(n) + 2].isdigit()}
    missing = [n for n in BUILDS if n not in by_name]
    if missing:
        raise SystemExit(f"missing tarballs for {missing}: run `npm pack vega@5 vega-lite@5 vega-embed@6`")
    libs = [library(by_name[n], n) for n in BUILDS]
    page = PAGE.replace("{versions}", ", ".join(v for v, _ in libs)).replace(
        "{libraries}", "\n".join(code for _, code in libs))
    tmp = OUT.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB): {', '.join(v for v, _ in libs)}")


if __name__ == "__main__":
    main(sys.argv[1:])
