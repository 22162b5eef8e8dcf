"""MkDocs hooks (``hooks:`` in mkdocs.yml): the pages written from the code, added as the site builds.

``trustregion.docs.PAGES`` maps each page's path under docs/ to the function that writes it (the configuration
reference from the structured configs, the metrics from the catalog). The pages exist only in the build: nothing is
written into docs/, so they are never stale and never in git.
"""

from __future__ import annotations

from mkdocs.structure.files import File, Files


def on_files(files: Files, config) -> Files:
    from trustregion.docs import PAGES

    for path, write in PAGES.items():
        files.append(File.generated(config, path, content=write()))
    return files
