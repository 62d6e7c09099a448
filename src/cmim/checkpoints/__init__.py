"""Released weights in, cmim encoders out: MAE / timm / mmpretrain (CMAE) / Lightning / cmim files read
as data only, mapped to the cmim encoder (timm's VisionTransformer names) with every key accounted for,
and cmim encoders written back in timm's and MAE's layouts.

- `read`: the file as plain data (torch.load weights_only with each format's exact allow-list, or
  safetensors); code in a pickle is refused before it runs;
- `detect`: `format: auto`, which layout and why;
- `mae`, `mmpretrain`, `lightning`, `native`: one module per source family, each turning the file into
  an `Extraction` (keys.py): candidate encoder weights under timm's names, every other key by group;
- `fit`: the loud check against the run's encoder (missing key, shape, depth, width, patch, grid);
- `importer`: the above in order, and the key report; `job`: the import job of an imported run;
- `export`: a cmim encoder as a timm or MAE file.
"""
