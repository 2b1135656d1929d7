"""One module per chapter: its configs per profile (plain dataclasses) and one function per reproduced table/figure."""

from dataclasses import replace


def pick_config(configs: dict, profile: str, **overrides):
    """The profile's config with ``overrides`` applied; an unknown profile is a ValueError naming the allowed ones."""
    if profile not in configs:
        raise ValueError(f"Invalid profile: {profile!r}; allowed: {sorted(configs)}")
    return replace(configs[profile], **overrides)
