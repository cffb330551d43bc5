"""Identity sources. Adding one touches its own module and one line here."""

from kong_cilium_identity.identity.sources import agent, hubble, kubernetes, static
from kong_cilium_identity.identity.sources.base import Source, SourceKind

SOURCE_KINDS: dict[str, SourceKind] = {
    kind.name: kind for kind in (static.KIND, kubernetes.KIND, hubble.KIND, agent.KIND)
}

__all__ = ["SOURCE_KINDS", "Source", "SourceKind"]
