{{/* The release's resource name (the StatefulSet's pods are <name>-0, <name>-1, ...). */}}
{{- define "ackwatch.name" -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every resource. */}}
{{- define "ackwatch.labels" -}}
app.kubernetes.io/name: ackwatch
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* What selects this release's pods. */}}
{{- define "ackwatch.selector" -}}
app.kubernetes.io/name: ackwatch
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The HTTP port of /metrics, /healthz, /readyz, /runs and /runbooks. */}}
{{- define "ackwatch.port" -}}9464{{- end -}}

{{/* Where alert links to runbooks point: runbooks.baseUrl, or every pod's own /runbooks. */}}
{{- define "ackwatch.runbookBaseUrl" -}}
{{- if .Values.runbooks.baseUrl -}}
{{- .Values.runbooks.baseUrl | trimSuffix "/" -}}
{{- else -}}
{{- printf "http://%s.%s.svc:%s/runbooks" (include "ackwatch.name" .) .Release.Namespace (include "ackwatch.port" .) -}}
{{- end -}}
{{- end -}}

{{/* Where secret Kafka properties are mounted. */}}
{{- define "ackwatch.secretDir" -}}/var/run/secrets/ackwatch/kafka{{- end -}}
