"""The batch evaluation: the pack's own API workflows over a dataset of videos and edit prompts,
scheduled on Ray over one ComfyUI server per GPU (or CPU slot), with the LOVEU-TGVE-2023 metrics.

Modules, each one job:
- `dataset`: the prompt tables (the LOVEU-TGVE-2023 release's CSV, a simple CSV) and the sources;
- `arms`: the arms compared, the settings, and each job's API graph built from `workflows/api/`;
- `worker`: one ComfyUI server, one job at a time (the Ray actor's body);
- `runner`: the plan, the skip of what is done, the scheduling over actors, the atomic outputs;
- `report`: results.csv, summary.md (the paper's Table 1 layout), plots and an HTML page.

`scripts/evaluate.sh` is the command. Nothing here imports comfy: the servers do.
"""
