#Requires -Version 5.1
<#
.SYNOPSIS
  Remove Sana Studio: exactly what install.ps1 listed in its manifest, and nothing else.
  Downloaded models (%LOCALAPPDATA%\sana-studio\models) and settings are kept.
#>
[CmdletBinding()]
param([string]$Manifest = (Join-Path $env:LOCALAPPDATA 'sana-studio\install-manifest.txt'))

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version 3

if (-not (Test-Path -LiteralPath $Manifest)) {
    Write-Host "uninstall: nothing to remove ($Manifest is missing)"
    exit 1
}
$Entries = @(Get-Content -LiteralPath $Manifest -Encoding UTF8)
[array]::Reverse($Entries)
foreach ($entry in $Entries) {
    $kind, $path = $entry -split ' ', 2
    if (-not $path) { continue }
    switch ($kind) {
        'file' { Remove-Item -LiteralPath $path -Force -ErrorAction SilentlyContinue }
        'venv' {
            # Removed whole, so check it is what the installer made and not some other folder.
            if (Test-Path -LiteralPath (Join-Path $path 'pyvenv.cfg')) { Remove-Item -LiteralPath $path -Recurse -Force }
            elseif (Test-Path -LiteralPath $path) { Write-Host "uninstall: kept ${path}: it is not a Python environment" }
        }
        'dir' {
            if (Test-Path -LiteralPath $path) {
                if (Get-ChildItem -LiteralPath $path -Force | Select-Object -First 1) {
                    Write-Host "uninstall: kept ${path}: it holds files the installer did not add"
                }
                else { Remove-Item -LiteralPath $path -Force }
            }
        }
        'regkey' {
            if ($path -like 'HKCU:\Software\Microsoft\Windows\CurrentVersion\Uninstall\*') {
                Remove-Item -LiteralPath $path -Recurse -Force -ErrorAction SilentlyContinue
            }
        }
        default { Write-Host "uninstall: skipping an unknown line: $entry" }
    }
}
Write-Host 'uninstall: Sana Studio is removed'
