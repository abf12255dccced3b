"""Put the sweep templates (``multirun_templates/``, shipped as ``imgexp.templates``) on imgexp's config
search path, after its own config tree: ``imgexp -m -cn <template>`` runs one from any directory."""
from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class TemplatesSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if any(p.path == "pkg://imgexp.conf" for p in search_path.get_path()):  # imgexp's app, not another one
            search_path.append(provider="imgexp-templates", path="pkg://imgexp.templates")
