{{/* Names and labels shared by every template. */}}

{{- define "infleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "infleet.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "infleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: infleet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "operator") */}}
{{- define "infleet.selectorLabels" -}}
app.kubernetes.io/name: {{ printf "infleet-%s" .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "infleet.componentLabels" -}}
{{ include "infleet.labels" .root }}
app.kubernetes.io/name: {{ printf "infleet-%s" .component }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "infleet.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{- define "infleet.operator.serviceAccountName" -}}
{{- default (printf "%s-operator" (include "infleet.fullname" .)) .Values.operator.serviceAccount.name -}}
{{- end -}}

{{- define "infleet.gateway.serviceAccountName" -}}
{{- default (printf "%s-gateway" (include "infleet.fullname" .)) .Values.gateway.serviceAccount.name -}}
{{- end -}}

{{/* Whether to render Prometheus Operator objects (monitoring.prometheusOperator: auto | true | false). */}}
{{- define "infleet.prometheusOperator" -}}
{{- $mode := toString .Values.monitoring.prometheusOperator -}}
{{- if or (eq $mode "true") (and (eq $mode "auto") (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1")) -}}
true
{{- end -}}
{{- end -}}

{{- define "infleet.podSecurity" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
