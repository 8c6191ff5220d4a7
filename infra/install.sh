#!/usr/bin/env bash
# Install the cluster stack Easel runs on, in dependency order, from the pinned kustomizations in
# infra/kustomize/: cert-manager -> Knative Serving + Kourier -> KServe -> Kubeflow Pipelines ->
# Kubeflow Trainer v2 (+ Easel's ClusterTrainingRuntime easel-torch). Idempotent: re-running
# re-applies. Needs kubectl >= 1.27 (built-in kustomize with remote resources) and a kubeconfig
# pointing at the target cluster.
#
#   bash infra/install.sh                     # everything
#   bash infra/install.sh kserve              # from one step on (cert-manager knative kserve kfp trainer)
#   bash infra/install.sh training-operator   # only the legacy Training Operator (PyTorchJob launcher)
set -euo pipefail
cd "$(dirname "$0")/kustomize"

apply() {  # server-side: some CRDs exceed the client-side last-applied-configuration limit
  echo "== kubectl apply -k infra/kustomize/$1"
  kubectl apply --server-side --force-conflicts -k "$1"
}
rollout() {  # rollout NAMESPACE DEPLOYMENT...
  local ns=$1; shift
  for d in "$@"; do kubectl -n "$ns" rollout status "deploy/$d" --timeout=600s; done
}

steps=(cert-manager knative kserve kfp trainer)
start=${1:-cert-manager}
if [[ $start == training-operator ]]; then  # legacy, not part of the default chain
  apply training-operator
  rollout kubeflow training-operator
  exit 0
fi
run=false
for step in "${steps[@]}"; do
  [[ $step == "$start" ]] && run=true
  $run || continue
  case $step in
    cert-manager)
      apply cert-manager
      rollout cert-manager cert-manager cert-manager-cainjector cert-manager-webhook ;;
    knative)
      apply knative/crds
      kubectl wait --for=condition=Established --timeout=120s crd/services.serving.knative.dev
      apply knative/core
      rollout knative-serving activator autoscaler controller webhook net-kourier-controller
      rollout kourier-system 3scale-kourier-gateway ;;
    kserve)
      apply kserve
      rollout kserve kserve-controller-manager ;;
    kfp)
      apply kubeflow-pipelines/cluster-scoped
      kubectl wait --for=condition=Established --timeout=120s crd/applications.app.k8s.io
      apply kubeflow-pipelines/env
      rollout kubeflow ml-pipeline ml-pipeline-ui ;;
    trainer)
      apply kubeflow-trainer
      kubectl wait --for=condition=Established --timeout=120s crd/clustertrainingruntimes.trainer.kubeflow.org
      rollout kubeflow-system kubeflow-trainer-controller-manager
      # the runtime every Easel TrainJob names (model_code/cluster/trainjob.py)
      kubectl apply --server-side -f ../../model_code/cluster/easel-torch-runtime.yaml ;;
  esac
done
$run || { echo "unknown step '$start': one of ${steps[*]}" >&2; exit 2; }
echo "== stack ready"
