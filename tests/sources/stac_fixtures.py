"""A small static STAC catalog over generated COGs: two items (A and C of the scene), one COG per
band (``eo:bands`` with common names, STAC 1.1 ``bands`` for nir), a 3-band ``visual`` asset and
a thumbnail; every asset href relative. Also an ItemCollection of the same items at the root."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pystac
from pyproj import Transformer
from pystac.extensions.eo import Band, EOExtension

from tests.sources.conftest import UTM33, Scene, write_cog


@dataclass(frozen=True)
class Stac:
    root: Path
    catalog: Path
    collection: Path  # an ItemCollection (FeatureCollection) file
    item_a: Path


def _item(scene: Scene, key: str, root: Path, when: dt.datetime) -> pystac.Item:
    data = scene.a_data if key == "a" else scene.c_data
    t = scene.a_transform if key == "a" else scene.c_transform
    folder = root / "items" / key
    write_cog(folder / "B04.tif", data[0], crs=UTM33, transform=t, nodata=0)
    write_cog(folder / "B08.tif", data[1], crs=UTM33, transform=t, nodata=0)
    visual = np.stack([data[0], (data[0] // 2 + 1).astype(np.uint8), data[1]])
    write_cog(folder / "visual.tif", visual, crs=UTM33, transform=t, nodata=0)
    (folder / "thumb.png").write_bytes(b"\x89PNG")
    left, top = t.c, t.f
    xs, ys = Transformer.from_crs(UTM33, 4326, always_xy=True).transform(
        [left, left + 640, left + 640, left], [top, top, top - 640, top - 640])
    ring = [[x, y] for x, y in zip(xs, ys, strict=True)]
    geom = {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}
    item = pystac.Item(f"scene-{key}", geom, [min(xs), min(ys), max(xs), max(ys)], when, {})
    item.set_self_href(str(folder / f"scene-{key}.json"))  # before the relative asset hrefs
    red = pystac.Asset("./B04.tif", media_type=pystac.MediaType.COG, roles=["data"])
    item.add_asset("B04", red)
    EOExtension.ext(red, add_if_missing=True).bands = [Band.create(name="B04",
                                                                   common_name="red")]
    nir = pystac.Asset("./B08.tif", media_type=pystac.MediaType.COG, roles=["data"],
                       extra_fields={"bands": [{"name": "B08", "eo:common_name": "nir"}]})
    item.add_asset("B08", nir)
    vis = pystac.Asset("./visual.tif", media_type=pystac.MediaType.COG, roles=["visual"])
    item.add_asset("visual", vis)
    EOExtension.ext(vis, add_if_missing=True).bands = [
        Band.create(name="B04", common_name="red"), Band.create(name="G", common_name="green"),
        Band.create(name="B08", common_name="nir")]
    item.add_asset("thumbnail", pystac.Asset("./thumb.png", media_type=pystac.MediaType.PNG,
                                             roles=["thumbnail"]))
    return item


def make_stac(scene: Scene, root: Path) -> Stac:
    items = [_item(scene, "a", root, dt.datetime(2020, 1, 1, tzinfo=dt.UTC)),
             _item(scene, "c", root, dt.datetime(2020, 2, 1, 10, 30, tzinfo=dt.UTC))]
    # written by hand so that the layout (and every href) stays exactly as generated
    links = [{"rel": "root", "href": "./catalog.json", "type": "application/json"}]
    for it in items:
        d = it.to_dict(include_self_link=False)
        d["links"] = [{"rel": "root", "href": "../../catalog.json"},
                      {"rel": "parent", "href": "../../catalog.json"}]
        Path(it.get_self_href() or "").write_text(json.dumps(d))
        links.append({"rel": "item", "href": f"./items/{it.id[-1]}/{it.id}.json",
                      "type": "application/geo+json"})
    (root / "catalog.json").write_text(json.dumps({
        "type": "Catalog", "id": "scenes", "stac_version": pystac.get_stac_version(),
        "description": "two test scenes", "links": links}))
    features: list[dict[str, Any]] = []
    for it in items:
        d = it.to_dict(include_self_link=False)
        d["links"] = []
        for asset in d["assets"].values():  # relative to the collection file at the root
            asset["href"] = f"items/{it.id[-1]}/{asset['href'][2:]}"
        features.append(d)
    (root / "collection.json").write_text(json.dumps({"type": "FeatureCollection",
                                                      "features": features}))
    return Stac(root, root / "catalog.json", root / "collection.json",
                root / "items" / "a" / "scene-a.json")
