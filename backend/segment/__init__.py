"""Silhouettes from photos: what the fit needs when images have no alpha.

May import `backend.core`, numpy, OpenCV and scipy; the multi-view check
(`consistency`) and the synthetic test photos (`synthetic`) also use
`backend.fit.visual_hull` and `backend.render`. Nothing here imports bpy.

- `images`: image and mask files <-> float arrays.
- `sources`: one silhouette per image, by mode: "alpha", "masks" (a mask file per
  image, matched by name), "key", "learned" or "auto" (alpha, else masks when given,
  else key).
- `key`: the backdrop's colours estimated from the image border, a trimap from each
  pixel's distance to them, refined by GrabCut (`grabcut`), tidied (`cleanup`).
- `consistency`: a consensus visual hull from the first masks, projected into every
  view; GrabCut re-seeded by it; views that disagree flagged with a reason.
- `learned`: a U2-Net-class salient-object ONNX model the user names (onnxruntime).
- `contact_sheet`: photo | mask | outlines, for reports.
- `synthetic`, `reference`: rendered photos with a known silhouette, and the temple
  data set's mask recipe, for tests and benchmarks.

    from backend.segment.sources import silhouettes_from_files
    from backend.segment.consistency import check_views
    sils = silhouettes_from_files(paths, mode="auto")
    result = check_views(cameras, [s.mask for s in sils], [s.name for s in sils], images)
    keep = result.kept()          # the flagged views (result.flagged()) are left out
"""
