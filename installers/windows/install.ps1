#Requires -Version 5.1
<#
.SYNOPSIS
  Install Sana Studio for this user, no administrator needed: its own Python environment, a Start
  menu shortcut, and an entry under Settings > Apps to remove it. Running it again replaces an
  earlier install.

.DESCRIPTION
  powershell -NoProfile -ExecutionPolicy Bypass -File installers\windows\install.ps1 [-Source PATH]

  -Source  a source folder (default: this checkout) or a wheel.

  Where things go:
    %LOCALAPPDATA%\sana-studio\venv                    the Python environment
    %LOCALAPPDATA%\sana-studio\install-manifest.txt    every path added, for uninstall.ps1
    Start menu\Programs\Sana Studio.lnk                runs pythonw -m app.main (no console window)
    HKCU\...\Uninstall\SanaStudio                      the Settings > Apps entry
  The command line is %LOCALAPPDATA%\sana-studio\venv\Scripts\sana-studio.exe. Downloaded models
  go to %LOCALAPPDATA%\sana-studio\models; uninstalling keeps them.

  Settings (environment):
    SANA_STUDIO_PYTHON       the python.exe to build the environment from (default: the newest
                             3.10+ the py launcher knows, else python on PATH)
    SANA_STUDIO_TORCH_SPEC   the torch requirement (default: torch)
    SANA_STUDIO_TORCH_INDEX  a package index URL for torch, or "default" for pip's own. Unset: PyTorch's
                             CUDA 13.0 index when nvidia-smi sees a GPU, else PyPI (whose Windows torch
                             is the CPU build).
#>
[CmdletBinding()]
param([string]$Source = (Join-Path $PSScriptRoot '..\..'))

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version 3

$Data = Join-Path $env:LOCALAPPDATA 'sana-studio'
$Venv = Join-Path $Data 'venv'
$Manifest = Join-Path $Data 'install-manifest.txt'
$Shortcut = Join-Path ([Environment]::GetFolderPath('Programs')) 'Sana Studio.lnk'
$Uninstaller = Join-Path $Data 'uninstall.ps1'
$AppsEntry = 'HKCU:\Software\Microsoft\Windows\CurrentVersion\Uninstall\SanaStudio'
$CudaIndex = 'https://download.pytorch.org/whl/cu130'

function Say([string]$Message) { Write-Host "install: $Message" }
function Fail([string]$Message) { throw "install: $Message" }

function Get-ExitCode([string]$Exe, [string[]]$Arguments) {
    # Windows PowerShell 5.1 turns a native command's redirected stderr into errors, which 'Stop'
    # would make fatal: these probes only want the exit code.
    $ErrorActionPreference = 'Continue'
    & $Exe @Arguments *> $null
    return $LASTEXITCODE
}

function Invoke-Checked([string]$Exe, [string[]]$Arguments) {
    & $Exe @Arguments
    if ($LASTEXITCODE -ne 0) { Fail "$Exe $($Arguments -join ' ') failed (exit code $LASTEXITCODE)" }
}

# Lines "dir PATH" (made here: removed if empty), "file PATH", "venv PATH" (removed whole),
# "regkey PATH"; uninstall.ps1 walks them backwards. Written after every addition, so a failed
# run can be undone too.
$Lines = New-Object System.Collections.Generic.List[string]
function Add-Record([string]$Kind, [string]$Path) {
    $Lines.Add("$Kind $Path")
    if (Test-Path -LiteralPath $Data) { Set-Content -LiteralPath $Manifest -Value $Lines -Encoding UTF8 }
}

function Find-Python {
    if ($env:SANA_STUDIO_PYTHON) { $candidates = @(, @($env:SANA_STUDIO_PYTHON)) }
    else { $candidates = @(@('py', '-3.13'), @('py', '-3.12'), @('py', '-3.11'), @('py', '-3.10'), @(, 'python')) }
    foreach ($candidate in $candidates) {
        $exe = $candidate[0]
        $rest = @($candidate | Select-Object -Skip 1)
        if (-not (Get-Command $exe -ErrorAction SilentlyContinue)) { continue }
        # The Microsoft Store's python.exe stub fails this too, and is skipped.
        if ((Get-ExitCode $exe ($rest + @('-c', 'import sys; sys.exit(sys.version_info < (3, 10))'))) -eq 0) {
            return , $candidate
        }
    }
    Fail "no Python 3.10 or newer found: install it from python.org, or set SANA_STUDIO_PYTHON"
}

# --- checks before anything is written -------------------------------------------------------
$Source = (Resolve-Path -LiteralPath $Source).Path
$IsWheel = $Source.EndsWith('.whl') -and (Test-Path -LiteralPath $Source -PathType Leaf)
if (-not $IsWheel -and -not (Test-Path -LiteralPath (Join-Path $Source 'pyproject.toml'))) {
    Fail "$Source is neither a wheel nor a source folder with pyproject.toml"
}
$Python = Find-Python
$PythonExe = $Python[0]
$PythonArgs = @($Python | Select-Object -Skip 1)

if (Test-Path -LiteralPath $Manifest) {
    Say 'replacing the earlier install'
    & (Join-Path $PSScriptRoot 'uninstall.ps1') -Manifest $Manifest | Out-Null
}
foreach ($path in @($Venv, $Shortcut, $Uninstaller)) {
    if (Test-Path -LiteralPath $path) { Fail "$path already exists and is not from this installer; move it away and run again" }
}

$TorchSpec = if ($env:SANA_STUDIO_TORCH_SPEC) { $env:SANA_STUDIO_TORCH_SPEC } else { 'torch' }
$Gpu = $false
if (Get-Command nvidia-smi -ErrorAction SilentlyContinue) { $Gpu = ((Get-ExitCode 'nvidia-smi' @('-L')) -eq 0) }
if ($env:SANA_STUDIO_TORCH_INDEX) { $TorchIndex = $env:SANA_STUDIO_TORCH_INDEX }
elseif ($Gpu) { $TorchIndex = $CudaIndex }
else { $TorchIndex = 'default' }
$TorchArgs = if ($TorchIndex -ne 'default') { @('--index-url', $TorchIndex) } else { @() }

# --- from here on, a failure removes what was added --------------------------------------------
$Stage = $null
try {
    if (-not (Test-Path -LiteralPath $Data)) {
        New-Item -ItemType Directory -Path $Data | Out-Null
        Add-Record 'dir' $Data
    }
    Add-Record 'file' $Manifest

    Say "making the Python environment in $Venv"
    Add-Record 'venv' $Venv
    Invoke-Checked $PythonExe ($PythonArgs + @('-m', 'venv', $Venv))
    $VenvPython = Join-Path $Venv 'Scripts\python.exe'
    $Pip = @('-m', 'pip', '--disable-pip-version-check', 'install')

    Say "installing torch ($TorchSpec from $TorchIndex)"
    Invoke-Checked $VenvPython ($Pip + $TorchArgs + @($TorchSpec))
    if ($Gpu) {
        if ((Get-ExitCode $VenvPython @('-c', 'import sys, torch; sys.exit(not torch.cuda.is_available())')) -ne 0) {
            Say "warning: this torch build cannot use the GPU (driver older than the build needs?); Sana Studio will run on the CPU."
            Say "another build: set SANA_STUDIO_TORCH_INDEX=https://download.pytorch.org/whl/cu126 and run again"
        }
    }

    Say "installing Sana Studio from $Source"
    if ($IsWheel) {
        Invoke-Checked $VenvPython ($Pip + @($Source))
    }
    else {
        # Built from a copy, so the source folder gets no build\ or *.egg-info.
        $Stage = Join-Path ([IO.Path]::GetTempPath()) ("sana-studio-" + [Guid]::NewGuid())
        & robocopy $Source $Stage /E /NFL /NDL /NJH /NJS /NP /XD .git .venv venv build dist tests __pycache__ .pytest_cache *.egg-info | Out-Null
        if ($LASTEXITCODE -ge 8) { Fail "could not copy $Source (robocopy exit code $LASTEXITCODE)" }
        Invoke-Checked $VenvPython ($Pip + @($Stage))
    }

    $Icons = & $VenvPython -c 'import pathlib, resources; print(pathlib.Path(resources.__file__).parent / "icons")'
    $Shell = New-Object -ComObject WScript.Shell
    Add-Record 'file' $Shortcut
    $Link = $Shell.CreateShortcut($Shortcut)
    $Link.TargetPath = Join-Path $Venv 'Scripts\pythonw.exe'
    $Link.Arguments = '-m app.main'
    $Link.WorkingDirectory = $env:USERPROFILE
    $Link.IconLocation = Join-Path $Icons 'sana-studio.ico'
    $Link.Description = 'Type a prompt, watch the image form, save it'
    $Link.Save()

    Add-Record 'file' $Uninstaller
    Copy-Item -LiteralPath (Join-Path $PSScriptRoot 'uninstall.ps1') -Destination $Uninstaller

    Add-Record 'regkey' $AppsEntry
    New-Item -Path $AppsEntry -Force | Out-Null
    $Version = & $VenvPython -c 'from importlib.metadata import version; print(version("sana-studio"))'
    $Entry = @{
        DisplayName = 'Sana Studio'; DisplayVersion = "$Version"; Publisher = 'Sana Studio';
        DisplayIcon = (Join-Path $Icons 'sana-studio.ico'); InstallLocation = $Data;
        UninstallString = "powershell.exe -NoProfile -ExecutionPolicy Bypass -File `"$Uninstaller`"";
    }
    foreach ($name in $Entry.Keys) { New-ItemProperty -Path $AppsEntry -Name $name -Value $Entry[$name] -Force | Out-Null }
    New-ItemProperty -Path $AppsEntry -Name NoModify -Value 1 -PropertyType DWord -Force | Out-Null
    New-ItemProperty -Path $AppsEntry -Name NoRepair -Value 1 -PropertyType DWord -Force | Out-Null
}
catch {
    Say "stopped before the end; removing what was added"
    if (Test-Path -LiteralPath $Manifest) { & (Join-Path $PSScriptRoot 'uninstall.ps1') -Manifest $Manifest | Out-Null }
    throw
}
finally {
    if ($Stage -and (Test-Path -LiteralPath $Stage)) { Remove-Item -LiteralPath $Stage -Recurse -Force }
}

Say 'done. Start Sana Studio from the Start menu.'
Say "command line: $(Join-Path $Venv 'Scripts\sana-studio.exe')"
Say 'to remove it: Settings > Apps > Sana Studio'
