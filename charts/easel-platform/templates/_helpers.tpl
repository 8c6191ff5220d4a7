{{/*
Names. Every object is "<release>-<component>" so that a release called "easel" gives easel-mlflow,
easel-objectstore, easel-postgres: the in-cluster URLs the docs and the library defaults use.
*/}}
{{- /* Service names are DNS-1035 labels: Helm accepts release names ("1easel", "my.easel") that
would name no Service. */ -}}
{{- define "easel.prefix" -}}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" .Release.Name) -}}
{{- fail (printf "release name %q: the chart names Services after it, so it must start with a letter and hold only lower-case letters, digits and '-'" .Release.Name) -}}
{{- end -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "easel.labels" -}}
app.kubernetes.io/name: easel-platform
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: easel
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: include with (dict "root" $ "component" "mlflow"). */}}
{{- define "easel.selector" -}}
app.kubernetes.io/name: easel-platform
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "easel.workloadServiceAccount" -}}
{{ include "easel.prefix" . }}-workload
{{- end -}}

{{/* ---------------- object store ---------------- */}}

{{- define "easel.s3.secretName" -}}
{{- .Values.objectStore.credentials.existingSecret | default (printf "%s-s3" (include "easel.prefix" .)) -}}
{{- end -}}

{{- define "easel.s3.service" -}}
{{ include "easel.prefix" . }}-objectstore
{{- end -}}

{{/* The S3 endpoint URL every client uses. */}}
{{- define "easel.s3.endpoint" -}}
{{- if eq .Values.objectStore.kind "external" -}}
{{- required "objectStore.endpoint is required when objectStore.kind=external (e.g. https://s3.us-east-1.amazonaws.com)" .Values.objectStore.endpoint | trimSuffix "/" -}}
{{- else -}}
{{- printf "http://%s.%s.svc:9000" (include "easel.s3.service" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* The two credential variables, from the Secret (never a literal). */}}
{{- define "easel.s3.credentialEnv" -}}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "easel.s3.secretName" . }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "easel.s3.secretName" . }}
      key: AWS_SECRET_ACCESS_KEY
{{- end -}}

{{/* ---------------- postgres ---------------- */}}

{{- define "easel.postgres.secretName" -}}
{{- .Values.postgres.auth.existingSecret | default (printf "%s-postgres" (include "easel.prefix" .)) -}}
{{- end -}}

{{- define "easel.postgres.host" -}}
{{- if .Values.postgres.enabled -}}
{{- printf "%s-postgres.%s.svc" (include "easel.prefix" .) .Release.Namespace -}}
{{- else -}}
{{- required "postgres.external.host is required when postgres.enabled=false" .Values.postgres.external.host -}}
{{- end -}}
{{- end -}}

{{- define "easel.postgres.port" -}}
{{- if .Values.postgres.enabled -}}5432{{- else -}}{{ .Values.postgres.external.port }}{{- end -}}
{{- end -}}

{{/* ---------------- mlflow ---------------- */}}

{{- define "easel.mlflow.service" -}}
{{ include "easel.prefix" . }}-mlflow
{{- end -}}

{{- define "easel.mlflow.uri" -}}
{{- printf "http://%s.%s.svc:5000" (include "easel.mlflow.service" .) .Release.Namespace -}}
{{- end -}}

{{- define "easel.image" -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag -}}
{{- end -}}

{{/* ---------------- pipelines ---------------- */}}

{{- define "easel.pipelines.namespace" -}}
{{- .Values.pipelines.namespace | default .Release.Namespace -}}
{{- end -}}

{{- define "easel.pipelines.servingNamespace" -}}
{{- .Values.pipelines.servingNamespace | default (include "easel.pipelines.namespace" .) -}}
{{- end -}}

{{/* A writable /tmp for containers whose root file system is read-only. */}}
{{- define "easel.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
{{- end -}}

{{/* Random credential that survives upgrades: reuse the key of an existing Secret if there is one.
     Call with (dict "root" $ "secret" NAME "key" KEY "length" N). lookup is empty in `helm template`
     and dry runs, so those render a fresh value (never written to a values file). */}}
{{- define "easel.persistentRandom" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .secret -}}
{{- if and $existing (index ($existing.data | default dict) .key) -}}
{{- index $existing.data .key -}}
{{- else -}}
{{- randAlphaNum .length | b64enc -}}
{{- end -}}
{{- end -}}

{{/* Namespaces that run Easel pods: the release's, the pipelines', the serving one (unique). */}}
{{- define "easel.clientNamespaces" -}}
{{- list .Release.Namespace (include "easel.pipelines.namespace" .) (include "easel.pipelines.servingNamespace" .) | uniq | toJson -}}
{{- end -}}
