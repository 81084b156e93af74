"""Fields by name, so a run's config.json rebuilds whatever field it describes."""

from __future__ import annotations

from typing import Any, Mapping

from fieldstudio.errors import ConfigError


def _field_classes() -> dict[str, type]:
    from .geo import GeoField
    from .image import ImageField
    from .radiance import NGPRadianceField, VanillaNeRF
    from .radiance_grids import TensoRFField, VoxelField
    from .sdf import SDFField
    from .video import VideoField

    return {"imagefield": ImageField, "sdffield": SDFField, "geofield": GeoField,
            "ngpradiancefield": NGPRadianceField, "vanillanerf": VanillaNeRF,
            "tensorffield": TensoRFField, "voxelfield": VoxelField,
            "videofield": VideoField}


def build_field(config: Mapping[str, Any], backend: str = "auto"):
    if not isinstance(config, Mapping) or "otype" not in config:
        raise ConfigError("a field config needs an 'otype'", "e.g. \"otype\": \"ImageField\"")
    classes = _field_classes()
    cls = classes.get(str(config["otype"]).lower())
    if cls is None:
        raise ConfigError(f"unknown field otype '{config['otype']}'", f"known fields: {', '.join(c.__name__ for c in classes.values())}")
    return cls(config, backend=backend)
