"""The faces' glue: the `easel` command (cli), the steps every face calls with a preset
(steps), the local lifecycle run through kfp.local (lifecycle) and the Kubeflow Pipelines client
(pipeline_client). The core library, `model_code`, never imports this package, `pipelines/` or
`components/` (tests/unit/faces/test_layering.py checks it); these modules import the core.
"""
