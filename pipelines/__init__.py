"""KFP pipelines: the lifecycle and the sub-pipelines users run alone. Compiled YAML for
upload to the Kubeflow UI lives in pipelines/compiled/ (`easel pipeline compile`)."""
