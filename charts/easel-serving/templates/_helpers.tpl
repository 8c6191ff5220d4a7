{{- /* The InferenceService (and its Services) are DNS-1035 labels: Helm accepts release names
("1easel", "my.easel") that would name none. */ -}}
{{- define "serving.name" -}}
{{- $n := .Values.name | default .Release.Name -}}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $n) -}}
{{- fail (printf "name %q (the release name unless name is set): it names the InferenceService and its Services, so it must start with a letter and hold only lower-case letters, digits and '-'" $n) -}}
{{- end -}}
{{- $n | trunc 45 | trimSuffix "-" -}}
{{- end -}}

{{- define "serving.labels" -}}
app.kubernetes.io/name: easel-serving
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: easel
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "serving.serviceAccount" -}}
{{- .Values.serviceAccount.name | default (printf "%s-s3" (include "serving.name" .)) -}}
{{- end -}}

{{/* Knative (Serverless) or plain Deployment (RawDeployment); KServe >= 0.16 renamed them. */}}
{{- define "serving.isKnative" -}}
{{- if has .Values.deploymentMode (list "Serverless" "Knative") -}}true{{- end -}}
{{- end -}}

{{/* Autoscaling and rollout fields of one component (KServe ComponentExtensionSpec).
     Call with (dict "root" $ "c" .Values.predictor "what" "predictor"). */}}
{{- define "serving.extension" -}}
{{- $c := .c -}}
{{- $knative := include "serving.isKnative" .root -}}
{{- if $knative -}}
{{- if not (has $c.scaleMetric (list "concurrency" "rps")) -}}
{{- fail (printf "%s.scaleMetric=%s: with deploymentMode=%s use concurrency or rps (Knative's autoscaler)" .what $c.scaleMetric .root.Values.deploymentMode) -}}
{{- end -}}
{{- else -}}
{{- if not (has $c.scaleMetric (list "cpu" "memory")) -}}
{{- fail (printf "%s.scaleMetric=%s: with deploymentMode=%s use cpu or memory (the HPA)" .what $c.scaleMetric .root.Values.deploymentMode) -}}
{{- end -}}
{{- end -}}
{{- if gt (int $c.minReplicas) (int $c.maxReplicas) -}}
{{- fail (printf "%s.minReplicas (%v) is larger than %s.maxReplicas (%v)" .what $c.minReplicas .what $c.maxReplicas) -}}
{{- end -}}
{{- if and (not $knative) (lt (int $c.minReplicas) 1) -}}
{{- fail (printf "%s.minReplicas=0 (scale to zero) needs deploymentMode=Serverless" .what) -}}
{{- end -}}
minReplicas: {{ $c.minReplicas }}
maxReplicas: {{ $c.maxReplicas }}
scaleMetric: {{ $c.scaleMetric }}
scaleTarget: {{ $c.scaleTarget }}
timeout: {{ $c.timeout }}
{{- with $c.containerConcurrency }}
containerConcurrency: {{ . }}
{{- end }}
{{- end -}}

{{/* The model server listens on 8080 (the only port Knative routes to). */}}
{{- define "serving.containerCommon" -}}
ports:
  - name: http1
    containerPort: 8080
    protocol: TCP
readinessProbe:
  httpGet:
    path: /v2/health/ready
    port: 8080
  periodSeconds: 10
  failureThreshold: 3
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
  {{- if .Values.provenance.secretName }}
  - name: c2pa
    mountPath: /etc/easel/c2pa
    readOnly: true
  {{- else }}
  - name: c2pa-dev
    mountPath: /var/run/easel/c2pa-dev
  {{- end }}
{{- end -}}

{{- /* The C2PA signing material: a Secret (required) or, only when asked, a dev chain. */ -}}
{{- define "serving.provenanceCheck" -}}
{{- if and (not .Values.provenance.secretName) (not .Values.provenance.devChain) }}
{{- fail "provenance.secretName is required: the name of a Secret holding the C2PA signing certificate chain (key chain.pem) and its private key (key signer.key), created with kubectl; or set provenance.devChain=true for a throw-away development chain that no verifier trusts" }}
{{- end }}
{{- end -}}

{{- define "serving.provenanceVolume" -}}
{{- if .Values.provenance.secretName }}
- name: c2pa
  secret:
    secretName: {{ .Values.provenance.secretName }}
    # readable by the container's non-root user: a Secret's files are root's, and the fsGroup that
    # 0440 would need is a pod-level field Knative takes only behind a feature flag
    defaultMode: 0444
{{- else }}
- name: c2pa-dev
  emptyDir:
    sizeLimit: 1Mi
{{- end }}
{{- end -}}

{{- define "serving.commonEnv" -}}
# the root file system is read-only: caches and temporary files go to the /tmp volume
- name: HOME
  value: /tmp
- name: XDG_CACHE_HOME
  value: /tmp/.cache
# weights come from /mnt/models only, never from a hub
- name: HF_HUB_OFFLINE
  value: "1"
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
{{- if .Values.provenance.secretName }}
# C2PA signing material from the Secret, read-only
- name: EASEL_C2PA_CERT_CHAIN
  value: {{ printf "/etc/easel/c2pa/%s" .Values.provenance.certChainKey | quote }}
- name: EASEL_C2PA_KEY
  value: {{ printf "/etc/easel/c2pa/%s" .Values.provenance.keyKey | quote }}
{{- else }}
# provenance.devChain: a development chain, made at start-up in its own writable volume
- name: EASEL_C2PA_DEV_DIR
  value: /var/run/easel/c2pa-dev
{{- end }}
{{- end -}}
